"""`InnerWhitening`: LocalFishers inside a composite layer's own `call`.

A composite layer (a KerasHub `TransformerEncoder` or `TransformerDecoder`, a user's residual block, any
layer whose `call` calls Dense/EinsumDense/convolution layers of its own) hides those layers from the model
graph: `reconstruct` rewrites the graph, and inside the composite's `call` the inputs of its inner layers
are tensors of the call's own making. `InnerWhitening` wraps such a layer and puts a `LocalFisher` in front
of its inner layers *inside* the call: each inner consumer's `call` first whitens its input,

```
y = f(W'^T (U x) + b)       for every inner Dense / EinsumDense / convolution in the composite
```

with the LocalFisher's usual statistics, refresh, trust region and function-preserving re-expression of
`W'` (the consumers are given to the LocalFisher explicitly instead of being found in a graph). Inner
layers that read the same tensor share one LocalFisher, as the query, key and value projections of a
self-attention do (one `U` for one tensor, its statistics taken once): which inner layers read which
tensor is found by running the composite once on symbolic inputs (`composite_plan`) and comparing the
tensors each inner layer receives.

Rules (`composite_plan`): an inner layer gets a LocalFisher if it is a Dense, EinsumDense or (transposed)
convolution whose kernel can absorb a mixing of its input (`keras_sngd.binding.inner_binding`), it is
trainable, and the composite's call calls it exactly once (an inner layer called twice, on two tensors,
would need one `U` for both: it is skipped). An EinsumDense that contracts its input's last few axes
together (an attention's output projection, `abcd,cde->abe`, over heads and their size) has one kernel
over those axes flattened: its LocalFisher whitens the input reshaped to `(..., c * d)`,

```
x' = reshape(reshape(x, (..., c d)) U, (..., c, d)),    K'[c, d, e] re-expressed as the (c d, e) matrix
```

Depthwise and separable convolutions, normalization and embedding layers inside keep their weights as
they are.

Where the call runs the inner layers once per time step (Keras's RNNs and `TimeDistributed`), one
LocalFisher call per step would count each time step as a training step: Keras's own layers are not
treated as composites (`is_composite`). The LocalFishers inside take the network's defaults from
`reconstruct` (a network with a composite layer gets the damping of convolutional and recurrent
networks, `keras_sngd.layer_defaults.needs_stable_arguments`).

The wrapper is an ordinary Keras layer: it saves and loads with `.keras` files (its config holds the
wrapped layer's config and, per LocalFisher, the indices of its consumers among the wrapped layer's
layers), `keras_sngd.fold` turns it back into the plain composite with `W = U W'` absorbed, and it trains
on TensorFlow, JAX and PyTorch.
"""

import keras
from keras import ops

from keras_sngd.binding import ATTENTION_TYPES
from keras_sngd.binding import bindings_for
from keras_sngd.binding import inner_binding
from keras_sngd.binding import is_supported_type
from keras_sngd.graph import clone_layer
from keras_sngd.graph import first_argument
from keras_sngd.graph import set_weights_from
from keras_sngd.graph import with_first_argument
from keras_sngd.local_fisher import LocalFisher

# Inner layers that can take a LocalFisher in front of them: one kernel over their first argument's
# features (attention layers and RNNs are composites of their own, reached through their sublayers or not
# at all).
INNER_TYPES = (
    keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
)
_NOT_INNER = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D,
              keras.layers.SeparableConv2D)


def adopt_call_signature(wrapper, layer):
    """Make Keras bind `wrapper`'s call arguments by `layer`'s call signature.

    A wrapper's `call(*args, **kwargs)` passes everything on, but Keras binds a layer's call arguments by
    its signature to decide which are tensors: with `**kwargs` all keyword arguments are one nested argument,
    which may not mix tensors and Python values (KerasHub's T5 layer is called with `attention_mask=<tensor>,
    position_bias=None, use_causal_mask=False`). Bound by the wrapped layer's own signature each is its own
    argument, as when the layer is called itself; `training` and `mask` are passed on when it takes them."""
    import inspect

    signature = inspect.signature(layer.call)
    wrapper._call_signature = signature
    wrapper.call_signature_parameters = [parameter.name for parameter in signature.parameters.values()]
    wrapper._call_has_training_arg = "training" in wrapper.call_signature_parameters
    wrapper._call_has_mask_arg = "mask" in wrapper.call_signature_parameters
    if hasattr(wrapper, "_call_context_args"):  # recent Keras (not in every 3.x that pyproject allows)
        wrapper._call_has_context_arg = {argument: argument in wrapper.call_signature_parameters
                                         for argument in wrapper._call_context_args}


def inner_layers(layer):
    """The layers inside `layer` (depth first, in tracking order, `layer` itself left out)."""
    return list(layer._flatten_layers(include_self=False))


def is_composite(layer):
    """Whether `layer` is a composite layer whose inner layers `InnerWhitening` can whiten: a layer (not a
    model) with Dense/EinsumDense/convolution layers inside that `reconstruct` does not whiten through the
    graph (not a supported type, or an attention layer whose own call is not Keras's, such as KerasHub's
    `CachedMultiHeadAttention`). Keras's own layers are left out (their recurrent and wrapper layers call
    inner layers once per time step, inside a loop: one LocalFisher call per step there would count every
    time step as a training step)."""
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, (keras.Model, InnerWhitening)):
        return False
    if is_supported_type(layer) and not (isinstance(layer, ATTENTION_TYPES) and not bindings_for(layer)[0]):
        return False
    if type(layer).__module__.startswith("keras.") and not isinstance(layer, ATTENTION_TYPES):
        return False
    return any(isinstance(sublayer, INNER_TYPES) and not isinstance(sublayer, _NOT_INNER)
               for sublayer in inner_layers(layer))


def candidate_reason(sublayer):
    """None if `sublayer` (inside a composite) can take a LocalFisher, else why not."""
    if not isinstance(sublayer, INNER_TYPES) or isinstance(sublayer, _NOT_INNER):
        return f"{type(sublayer).__name__} is not a Dense, EinsumDense or convolution layer"
    if not sublayer.built:
        return "not built"
    binding, reason = inner_binding(sublayer)
    if binding is None:
        return reason
    if not sublayer.trainable or not binding.trainable:
        return "frozen (trainable=False): it takes no gradient step, so there is nothing to precondition"
    return None


def standalone_arguments(args, kwargs):
    """`(args, kwargs)` with every `KerasTensor` replaced by a new dense one of the same shape and dtype that no
    graph produced (the same tensor given twice stays one tensor), so that calling a layer on them adds no
    node to the model's graph; None if a leaf is neither a tensor nor a plain Python value."""
    copies = {}
    plain = (type(None), bool, int, float, str)

    def copy(value):
        if isinstance(value, keras.KerasTensor):
            if id(value) not in copies:
                # Dense: Keras's shape inference marks some dense tensors sparse (the input of a KerasHub
                # Gemma's first decoder block), and a sparse placeholder fails where the real tensor works.
                copies[id(value)] = keras.KerasTensor(value.shape, dtype=value.dtype)
            return copies[id(value)]
        if not isinstance(value, plain):
            raise TypeError(type(value).__name__)
        return value

    try:
        return keras.tree.map_structure(copy, (tuple(args), dict(kwargs)))
    except TypeError:
        return None


def call_spec(args, kwargs):
    """A JSON-able description of a call's arguments (tensors as shape and dtype), for `spec_arguments`."""

    def describe(value):
        if isinstance(value, keras.KerasTensor):
            return {"keras_tensor": True, "shape": list(value.shape), "dtype": value.dtype}
        return value

    return keras.tree.map_structure(describe, [list(args), dict(kwargs)])


def spec_arguments(spec):
    """`(args, kwargs)` of standalone `KerasTensor`s from a `call_spec`."""

    def is_tensor(value):
        return isinstance(value, dict) and value.get("keras_tensor") is True

    def make(value):
        if is_tensor(value):
            return keras.KerasTensor(tuple(value["shape"]), dtype=value["dtype"])
        if isinstance(value, dict):
            return {key: make(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [make(item) for item in value]
        return value

    args, kwargs = spec
    return tuple(make(item) for item in args), {key: make(item) for key, item in kwargs.items()}


def composite_plan(layer, args, kwargs):
    """Which inner layers of the built composite `layer` read which tensor, for the call
    `layer(*args, **kwargs)` (`args`, `kwargs` standalone, `standalone_arguments`).

    Runs the call once on symbolic tensors with every candidate inner layer recording the tensor it
    receives. Returns `(groups, skipped)`: `groups` a list of `(indices, shape, contracted)`, one per
    tensor read by candidate layers (and number of trailing axes they contract), in the order the call
    first reads them: the
    indices of its readers in `inner_layers(layer)`, its shape as the LocalFisher sees it (the batch size
    None; `contracted` trailing axes flattened into one) and `contracted`; `skipped` a list of
    `(index, reason)`.
    """
    sublayers = inner_layers(layer)
    # Unknown sizes made concrete (2): a backend that infers unknown sizes by running the call twice
    # (PyTorch) then runs it once, and every recorded shape is a number.
    concrete = {}

    def sized(value):
        if isinstance(value, keras.KerasTensor) and any(size is None for size in value.shape):
            if id(value) not in concrete:
                concrete[id(value)] = keras.KerasTensor(tuple(2 if size is None else size for size in value.shape),
                                                        dtype=value.dtype)
            return concrete[id(value)]
        return value

    args, kwargs = keras.tree.map_structure(sized, (tuple(args), dict(kwargs)))
    candidates, skipped = [], []
    for index, sublayer in enumerate(sublayers):
        if isinstance(sublayer, INNER_TYPES) and not isinstance(sublayer, _NOT_INNER):
            reason = candidate_reason(sublayer)
            if reason is None:
                candidates.append(index)
            else:
                skipped.append((index, reason))
        elif isinstance(sublayer, _NOT_INNER) and sublayer.trainable_weights:
            # Reported, as in the model graph (EfficientNet's and MobileNet's blocks hold them).
            skipped.append((index, f"{type(sublayer).__name__} filters each input channel separately: it cannot "
                                   "absorb a mixing of channels"))
    seen = {index: [] for index in candidates}
    order = []  # the candidates in the order the call calls them
    patched = []
    try:
        for index in candidates:
            sublayer = sublayers[index]
            original = type(sublayer).call.__get__(sublayer)

            def recorder(*call_args, _index=index, _original=original, **call_kwargs):
                seen[_index].append(first_argument(call_args, call_kwargs))
                order.append(_index)
                return _original(*call_args, **call_kwargs)

            object.__setattr__(sublayer, "call", recorder)
            patched.append(sublayer)
        def probe(*call_args, **call_kwargs):
            # A backend may run the call more than once (PyTorch retries on real tensors where an operation
            # fails on its "meta" ones): only the last, complete run counts.
            for calls in seen.values():
                calls.clear()
            order.clear()
            return layer(*call_args, **call_kwargs)

        keras.src.backend.compute_output_spec(probe, *args, **kwargs)
    finally:
        for sublayer in patched:
            object.__delattr__(sublayer, "call")
    groups, tensors = [], []
    first_call = {index: order.index(index) if index in order else len(order) for index in candidates}
    for index in sorted(candidates, key=first_call.get):
        calls = seen[index]
        contracted = inner_binding(sublayers[index])[0].contracted_axes
        if not calls:
            skipped.append((index, "not called by the composite's call"))
            continue
        if len(calls) > 1:
            skipped.append((index, (
                f"called {len(calls)} times inside the composite's call: one U would have to whiten every "
                "tensor it reads")))
            continue
        for position, (tensor, axes) in enumerate(tensors):
            if tensor is calls[0] and axes == contracted:
                groups[position][0].append(index)
                break
        else:
            tensors.append((calls[0], contracted))
            shape = [None] + [int(size) for size in tuple(calls[0].shape)[1:]]
            if contracted > 1:
                # The contracted trailing axes as one feature axis (`InnerWhitening` reshapes the tensor so).
                features = 1
                for size in shape[-contracted:]:
                    features *= size
                shape = shape[:-contracted] + [features]
            groups.append(([index], shape, contracted))
    return groups, sorted(skipped)


@keras.saving.register_keras_serializable(package="keras_sngd")
class InnerWhitening(keras.layers.Wrapper):
    """A composite layer with `LocalFisher`s before the Dense/EinsumDense/convolution layers inside its call.

    `keras_sngd.reconstruct` puts it in place of a composite layer (a KerasHub `TransformerEncoder`, a
    user's block) whose inner layers it cannot reach through the model graph; see the module docstring.
    The wrapper computes what the wrapped layer computes (the LocalFishers start at `U = I` and keep the
    function through every refresh), with every inner consumer's input whitened: SGD on the inner
    kernels `W'` is then NGD on `W = U W'`, as for the layers of the graph. `keras_sngd.fold` turns it back
    into the wrapped layer, with `W = U W'`.

    Args:
        layer: the built composite layer.
        fishers: list of dicts, one per LocalFisher: `"consumers"`, the indices of the inner layers it
            feeds among `layer._flatten_layers(include_self=False)`, `"input_shape"`, the shape of the
            tensor they read, and `"config"`, the LocalFisher's config (its `axis` that of the consumers'
            features). `reconstruct` makes it (`composite_plan`).
        call_spec: the arguments of a call that builds `layer` (`call_spec`), used when loading a
            layer whose inner layers are built only by calling it; None if its `build` builds them.
        **kwargs: base layer arguments (`name`, ...).

    Attributes:
        fishers: the LocalFishers, in the order of `fishers`.
    """

    def __init__(self, layer, fishers=(), call_spec=None, **kwargs):
        super().__init__(layer, **kwargs)
        adopt_call_signature(self, layer)
        self._fisher_specs = [{"consumers": [int(i) for i in spec["consumers"]],
                               "input_shape": [None if size is None else int(size) for size in spec["input_shape"]],
                               "contracted": int(spec.get("contracted", 1)),
                               "config": dict(spec["config"])}
                              for spec in fishers]
        self._call_spec = call_spec
        if not self._fisher_specs:
            raise ValueError(f"`fishers` must name at least one LocalFisher and its consumers. Received: fishers={fishers!r}")
        self.fishers = [LocalFisher.from_config(dict(spec["config"])) for spec in self._fisher_specs]
        self._whitened = None
        self.supports_masking = getattr(layer, "supports_masking", False)
        if self._inner_built():
            self._install()

    # Building.

    def _consumers(self, spec, sublayers=None):
        sublayers = inner_layers(self.layer) if sublayers is None else sublayers
        if max(spec["consumers"]) >= len(sublayers):
            raise ValueError(f"InnerWhitening '{self.name}': the wrapped layer {self.layer.name!r} has "
                             f"{len(sublayers)} inner layers, the config names consumer {max(spec['consumers'])}.")
        return [sublayers[index] for index in spec["consumers"]]

    def _inner_built(self):
        if not self.layer.built:
            return False
        sublayers = inner_layers(self.layer)
        return all(index < len(sublayers) and sublayers[index].built
                   for spec in self._fisher_specs for index in spec["consumers"])

    def _install(self):
        """Build each LocalFisher for its consumers' inputs, bind it to them and route their calls through it."""
        sublayers = inner_layers(self.layer)
        for position, (fisher, spec) in enumerate(zip(self.fishers, self._fisher_specs)):
            consumers = self._consumers(spec, sublayers)
            bindings = []
            for consumer in consumers:
                binding, reason = inner_binding(consumer)
                if binding is None:
                    raise ValueError(f"InnerWhitening '{self.name}': inner layer {consumer.name!r} cannot absorb "
                                     f"a LocalFisher: {reason}")
                bindings.append(binding)
            features = {binding.features for binding in bindings}
            if len(features) != 1:
                raise ValueError(f"InnerWhitening '{self.name}': the consumers of {fisher.name!r} read different "
                                 f"numbers of features ({sorted(features)}).")
            shape = tuple(spec["input_shape"])
            if shape[fisher.axis] not in features:
                raise ValueError(f"InnerWhitening '{self.name}': {fisher.name!r} expects {shape[fisher.axis]} "
                                 f"features on axis {fisher.axis}, its consumers read {sorted(features)}.")
            if not fisher.built:
                fisher.build(shape)
            object.__setattr__(fisher, "_inner_bindings", bindings)
            for consumer in consumers:
                self._route(consumer, position)
            fisher.prepare_handoff()
        self.built = True

    def _route(self, consumer, position):
        """Make `consumer`'s call whiten its first argument with LocalFisher number `position` first."""
        original = type(consumer).call.__get__(consumer)
        wrapper = self

        def call(*args, **kwargs):
            args, kwargs = with_first_argument(args, kwargs, wrapper._whiten(position, first_argument(args, kwargs)))
            return original(*args, **kwargs)

        object.__setattr__(consumer, "call", call)

    def _whiten(self, position, tensor):
        """The whitened `tensor` for LocalFisher `position`: one LocalFisher call per tensor and wrapper call
        (the consumers reading the same tensor share it)."""
        cache = self._whitened
        if cache is not None:
            for fisher_position, source, whitened in cache:
                if fisher_position == position and source is tensor:
                    return whitened
        contracted = self._fisher_specs[position]["contracted"]
        if contracted > 1:
            # An EinsumDense contracting the last few axes together: whitened as one flattened feature axis.
            shape = ops.shape(tensor)
            flat = ops.reshape(tensor, tuple(shape[:-contracted]) + (self.fishers[position].inverse_root.shape[0],))
            whitened = ops.reshape(self.fishers[position](flat), shape)
        else:
            whitened = self.fishers[position](tensor)
        if cache is not None:
            cache.append((position, tensor, whitened))
        return whitened

    def build(self, *args, **kwargs):
        if not self._inner_built() and self._call_spec is not None:
            call_args, call_kwargs = spec_arguments(self._call_spec)
            self.layer(*call_args, **call_kwargs)
        if not self._inner_built():
            raise ValueError(f"InnerWhitening '{self.name}': the wrapped layer {self.layer.name!r} is not built "
                             "and no call spec says how to build it.")
        if not all(fisher.built for fisher in self.fishers):
            self._install()
        self.built = True

    def build_from_config(self, config):
        self.build()

    def get_build_config(self):
        return {"built": True}

    # Calling.

    def call(self, *args, **kwargs):
        outer = self._whitened
        self._whitened = []
        try:
            return self.layer(*args, **kwargs)
        finally:
            self._whitened = outer

    def compute_output_spec(self, *args, **kwargs):
        # The wrapped layer's own (some layers define it, or their output shape, instead of tracing the call).
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, *args, **kwargs):
        return self.layer.compute_mask(*args, **kwargs)

    # Folding and copying.

    def folded_layer(self):
        """A copy of the wrapped layer without LocalFishers, with each inner consumer's `W = U W'` (and the
        bias of a centered one) absorbed: what `keras_sngd.fold` puts in the wrapper's place."""
        from keras_sngd.fold import _absorb  # fold imports this module

        new = clone_layer(self.layer)
        if self._call_spec is not None:
            # Built as `reconstruct` built the wrapped copy: by a call (some layers, such as KerasHub's
            # TransformerDecoder, come out of `from_config` marked built with their inner layers unbuilt).
            call_args, call_kwargs = spec_arguments(self._call_spec)
            new(*call_args, **call_kwargs)
        elif self.layer.get_build_config():
            new.build_from_config(self.layer.get_build_config())
        set_weights_from(self.layer, new)
        sublayers = inner_layers(new)
        for fisher, spec in zip(self.fishers, self._fisher_specs):
            if fisher.center and any(binding.exact_centering_refusal for binding in fisher._inner_bindings):
                raise ValueError(
                    f"Cannot fold LocalFisher '{fisher.name}' inside '{self.name}': it centers (center=True) and "
                    "an inner layer it feeds cannot absorb the shift in its bias. keras_sngd.reconstruct does not "
                    "center such LocalFishers; build this InnerWhitening with center=False for them."
                )
            for binding, index in zip(fisher._inner_bindings, spec["consumers"]):
                _absorb(fisher, binding, sublayers[index], inner_binding(sublayers[index])[0])
        return new

    def get_config(self):
        config = super().get_config()
        if self._call_spec is not None:
            # Built by the call spec when loaded: a layer whose `build` does not build its inner layers would
            # otherwise be "built" from its build config first, with a warning from Keras.
            config["layer"] = dict(config["layer"])
            config["layer"].pop("build_config", None)
        config["fishers"] = [{"consumers": list(spec["consumers"]), "input_shape": list(spec["input_shape"]),
                              "contracted": spec["contracted"], "config": fisher.get_config()}
                             for spec, fisher in zip(self._fisher_specs, self.fishers)]
        config["call_spec"] = self._call_spec
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)

    def _keras_sngd_inner_fishers(self):
        """The LocalFishers inside (`keras_sngd.graph.walk_layers` yields them after the wrapper)."""
        return list(self.fishers)

    def describe(self):
        """One line per LocalFisher inside (`LocalFisher.describe`), with the inner layers it feeds."""
        rows = []
        for fisher in self.fishers:
            names = ", ".join(binding.layer.name for binding in getattr(fisher, "_inner_bindings", []))
            rows.append(f"{fisher.describe()} [inside '{self.layer.name}', before {names}]")
        return "\n".join(rows)
