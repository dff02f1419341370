"""`fold(model)`: absorb every `LocalFisher` into the layer it feeds, for deployment."""

import keras
import numpy as np

from keras_sngd.binding import bindings_for
from keras_sngd.consumers import consumer_bindings
from keras_sngd.fisher_statistics import FisherStatistics
from keras_sngd.graph import LayerCloneError
from keras_sngd.graph import check_rewritable
from keras_sngd.graph import clone_functional
from keras_sngd.graph import clone_layer
from keras_sngd.graph import clone_model_whole
from keras_sngd.graph import copy_weights
from keras_sngd.graph import first_tensor
from keras_sngd.graph import mark_built_on_call
from keras_sngd.graph import sequential_input
from keras_sngd.graph import walk_layers
from keras_sngd.fisher_layer import FisherLayer
from keras_sngd.inner_whitening import InnerWhitening
from keras_sngd.recurrent_whitening import RecurrentWhitening
from keras_sngd.step_bound import StepBound


def fold(model):
    """A plain Keras model, without `LocalFisher` layers, that computes what `model` computes.

    Each `LocalFisher` (`y = U (x - mu)`, `mu = 0` unless centered) is absorbed into the weights of the
    layers it feeds, with the effective weights of the paper's reconstruction:

    ```
    K = U K'  (on the kernel's input-feature axis),   b = b' - contract(K, mu)
    ```

    so the folded model costs exactly what the original architecture costs. Where that is not exact, the
    transformation stays as standard Keras layers instead: a `Normalization(mean=mu, variance=1)` for a
    centered LocalFisher before a `same`/`causal`-padded convolution (zero padding sees no shift), and a
    `Dense(d, use_bias=False)` with kernel `U` for a LocalFisher with a consumer that cannot absorb it
    (see `keras_sngd.consumers`: a layer at a non-first input such as the `Add` of a residual branch, a
    layer also called on other inputs, a raw operation, a layer with no kernel), so every path keeps `U`.
    Consumers inside a nested model absorb `U` there, and an `InnerWhitening` (LocalFishers inside a
    composite layer's call) becomes the composite layer it wraps, each inner consumer absorbing its `U`, and a
    `RecurrentWhitening` becomes the RNN layer it wraps, with `R = U_h R'` as its recurrent kernel.
    `FisherStatistics` and `StepBound` layers (the identity) are dropped.
    The result saves and loads with no custom objects.

    Args:
        model: a Functional or Sequential model (nested models are folded recursively).

    Returns:
        A new model of the same class; `model` is not changed and shares no variables with it.
    """
    check_rewritable(model, "fold")
    return _fold_or_copy_whole(model)


def _fold_or_copy_whole(model, inherited=None):
    """`_fold(model, inherited)`; a model that cannot be rebuilt layer by layer and has nothing to fold
    (no LocalFisher inside, no layer absorbing an outer one: as `reconstruct` leaves a model it copied
    whole) is copied whole from its own config instead."""
    try:
        return _fold(model, inherited)
    except LayerCloneError as error:
        absorbing = inherited or {}
        if any(isinstance(layer, (FisherLayer, StepBound)) or layer in absorbing for _, layer in walk_layers(model)):
            raise
        try:
            return clone_model_whole(model)
        except Exception:
            # Not from its own config either (a nested model whose layer's `from_config` fails): the model
            # holding it may still copy whole (as `reconstruct` copied it, `_copied_whole`).
            raise error from None


def _fold_plan(model):
    """For each LocalFisher of `model`: its consumers' bindings if they all absorb it (the rule of
    `keras_sngd.consumers`), else None; and for each absorbing consumer, the `(LocalFisher, binding)` pairs it
    absorbs."""
    plan, absorbs = {}, {}
    for layer in model.layers:
        if not isinstance(layer, FisherLayer):
            continue
        if isinstance(layer, FisherStatistics):
            plan[layer] = []  # the identity: dropped, nothing to absorb
            continue
        bindings, _ = consumer_bindings(layer, model)
        plan[layer] = bindings or None
        for binding in bindings:
            absorbs.setdefault(binding.layer, []).append((layer, binding))
    return plan, absorbs


def _fold(model, inherited=None):
    """Fold `model`; `inherited` maps layers of this (nested) model to the `(LocalFisher, binding)` pairs of the
    outer LocalFishers they absorb (two for a Bidirectional layer: one per direction)."""
    plan, absorbs = _fold_plan(model)
    absorbs.update(inherited or {})
    pairs, mixings = [], []

    unwrapped = []

    def clone(layer):
        if isinstance(layer, InnerWhitening):
            return layer.folded_layer()  # the wrapped layer, with its LocalFishers absorbed
        if isinstance(layer, RecurrentWhitening):
            new = layer.folded_layer()  # the RNN with R = U_h R'; its input kernel absorbs the LocalFisher before it
            unwrapped.append((layer, new))
            return new
        new = _fold_or_copy_whole(layer, absorbs) if isinstance(layer, keras.Model) else clone_layer(layer)
        pairs.append((layer, new))
        return new

    def replacement(layer):
        """The standard layers that replace a LocalFisher in the folded graph (often none)."""
        bindings = plan[layer]
        layers = []
        if isinstance(layer, FisherStatistics):
            return layers
        if layer.center and (bindings is None or not all(b.exact_centering for b in bindings)):
            mean = np.asarray(layer.shift.numpy())
            layers.append(keras.layers.Normalization(
                axis=layer.axis, mean=mean, variance=np.ones_like(mean), name=f"{layer.name}_shift"
            ))
        if bindings is None:
            if layer.axis not in (-1, len(layer.input.shape) - 1):
                raise ValueError(
                    f"Cannot fold LocalFisher {layer.name!r}: its consumers cannot absorb it and its features "
                    f"are on axis {layer.axis}, not the last one."
                )
            dense = keras.layers.Dense(
                layer.inverse_root.shape[0], use_bias=False, dtype=layer.dtype_policy, name=f"{layer.name}_mixing"
            )
            layers.append(dense)
            mixings.append((dense, layer.inverse_root.numpy()))
        return layers

    if isinstance(model, keras.Sequential):
        new_model = keras.Sequential([sequential_input(model)], name=model.name)
        for layer in model.layers:
            if isinstance(layer, StepBound):
                continue  # the identity
            for new_layer in replacement(layer) if isinstance(layer, FisherLayer) else [clone(layer)]:
                new_model.add(new_layer)
        mark_built_on_call(new_model)
    else:

        def rewrite_call(original, layer, args, kwargs):
            if isinstance(original, StepBound):
                return first_tensor(args, kwargs)  # the identity
            if isinstance(original, FisherLayer):
                tensor = first_tensor(args, kwargs)
                for new_layer in replacement(original):
                    tensor = new_layer(tensor)
                return tensor
            return layer(*args, **kwargs)

        new_model = clone_functional(model, clone, rewrite_call)
    copy_weights([(original, new) for original, new in pairs if not isinstance(original, (FisherLayer, StepBound))])
    for dense, inverse_root in mixings:
        dense.kernel.assign(inverse_root)
    for original, new in pairs + unwrapped:
        for local_fisher, binding in absorbs.get(original, ()):
            _absorb(local_fisher, binding, new)
    return new_model


def _absorb(local_fisher, binding, new_layer, new_binding=None):
    """Set `new_layer`'s kernel (and bias) to the effective weights of `binding.layer` behind `local_fisher`
    (`new_binding`: the new layer's binding, where not its graph binding of the same part)."""
    if new_binding is None:
        new_binding = bindings_for(new_layer)[0][binding.part]
    inverse_root = local_fisher.inverse_root.numpy()
    effective = binding.mix(inverse_root)
    new_binding.kernel.assign(effective)
    if local_fisher.center and binding.exact_centering:
        bias = keras.ops.convert_to_tensor(binding.bias)
        new_binding.bias.assign(binding.shifted_bias(bias, effective, local_fisher.shift.numpy()))
