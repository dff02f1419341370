"""Shared helpers for reading and rewriting Keras model graphs (`reconstruct`, `fold`, `keras_sngd.consumers`
and the `NGD` optimizer): the one recursive layer walk, the scope of a model's calls, and dtype casts."""

import tempfile
import types

import keras
from keras.src.models.functional import Functional
from keras.src.ops.core import Cast

from keras_sngd.config_repair import mark_repaired
from keras_sngd.config_repair import repair_of
from keras_sngd.config_repair import repaired_clone
from keras_sngd.handoff import without_carriers


def check_rewritable(model, what):
    """Raise a ValueError unless `model` is a built Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"{what} needs a Sequential model with a known input shape. Start it with "
                "`keras.Input(shape)` or call `model.build(input_shape)` first. "
                f"Received: model={model.name!r} (not built)"
            )
        return
    if isinstance(model, Functional):
        return
    if isinstance(model, keras.Model):
        raise ValueError(
            f"{what} needs a Functional or Sequential model: it rewrites the layer graph, and "
            f"{type(model).__name__} is a subclassed Model whose `call` is Python code with no graph. "
            "Either build the same network with the Functional API (`keras.Model(inputs, outputs)`) or "
            "`keras.Sequential`, or put `keras_sngd.LocalFisher()` layers in your subclass yourself: "
            "create one in `__init__` for each Dense/Conv/RNN layer and call it on that layer's input in "
            f"`call`. Received: model={model.name!r} of type {type(model).__name__}"
        )
    raise ValueError(f"{what} needs a keras.Model. Received: model={model!r}")


def clone_layer(layer):
    """A fresh layer (or raw operation) with the same config (weights are copied once the new model is
    built).

    A config its class cannot rebuild is repaired where `keras_sngd.config_repair` can (keys the
    constructor does not take, a required argument left out).

    Raises:
        ValueError: the layer cannot be rebuilt from its own `get_config()` (a bug of that layer, which
            `keras.models.clone_model` and `keras.saving.load_model` meet too); names the layer and keeps
            the original error as the cause.
    """
    if type(layer) is keras.layers.Lambda:
        # The user's own function, in memory: no deserialization (which Keras's safe mode refuses for
        # Python lambdas, as `keras.models.clone_model` does). A Lambda holds no weights.
        return keras.layers.Lambda(layer.function, output_shape=layer._output_shape, mask=layer.mask,
                                   arguments=dict(layer.arguments), **keras.layers.Layer.get_config(layer))
    config = None
    try:
        config = layer.get_config()
        clone = layer.__class__.from_config(config)
    except Exception as error:
        # A config that does not match the constructor (`keras_sngd.config_repair`), repaired if a clone
        # from the repaired config records the same config.
        clone = repaired_clone(layer, config)
        if clone is None:
            raise LayerCloneError(layer, error) from error
        return clone
    if repair_of(layer) is not None:
        mark_repaired(clone, repair_of(layer))
    return clone


class LayerCloneError(ValueError):
    """A layer cannot be rebuilt from its own `get_config()` (a bug of that layer).

    A nested model holding it may still be copied whole from the model's own config
    (`clone_model_whole`), as `keras.models.clone_model` and `keras.saving.load_model` copy a KerasHub
    backbone; `reconstruct` and `fold` do that where they have nothing to change inside it.

    Attributes:
        layer: the layer.
        reason: a short sentence: which call fails, and its error.
    """

    def __init__(self, layer, error, rebuilt=False):
        kind = type(layer).__name__
        self.layer = layer
        if rebuilt:
            # `from_config` worked, but what it built holds other variables than the layer.
            self.reason = (f"`{kind}.from_config(layer.get_config())` rebuilds layer {getattr(layer, 'name', layer)!r} "
                           f"with other variables than it holds ({type(error).__name__}: {error}); its config does "
                           "not describe what was done to it after it was built (for example inner layers "
                           "quantized by `model.quantize`, which a MultiHeadAttention's config does not record)")
        else:
            self.reason = (f"`{kind}.from_config(layer.get_config())` fails for layer {getattr(layer, 'name', layer)!r} "
                           f"({type(error).__name__}: {error})")
        super().__init__(
            f"Cannot clone layer {getattr(layer, 'name', layer)!r} ({kind}): {self.reason}. Rebuilding the "
            "graph layer by layer needs it; a saved model that holds this layer outside a model with its "
            "own config would not load either. Fix or override the layer's `get_config`/`from_config`, or "
            "insert `keras_sngd.LocalFisher` layers by hand."
        )


def clone_model_whole(model):
    """A copy of `model` rebuilt from the model's own config, as `keras.models.clone_model`
    and `keras.saving.load_model` rebuild it (its class kept: a KerasHub backbone's config holds its
    constructor's arguments, not its layers'), with `model`'s weights and every layer's `trainable` flag.

    Raises:
        ValueError: the copy does not hold the same weights (a model whose config does not rebuild it).
    """
    new = model.__class__.from_config(model.get_config())
    old_layers, new_layers = list(model._flatten_layers()), list(new._flatten_layers())
    shapes = [tuple(weight.shape) for weight in model.weights]
    if len(old_layers) != len(new_layers) or shapes != [tuple(weight.shape) for weight in new.weights]:
        raise ValueError(f"Copying model {model.name!r} from its config gave a different model.")
    set_weights_from(model, new)
    restore_derived_state(model, new)
    # Parents before their layers (a parent's flag is set on its layers too, then each layer's own).
    for old, copy in zip(old_layers, new_layers):
        copy.trainable = old.trainable
    return new


def fresh_input(tensor):
    """A fresh `keras.Input` like the model input `tensor`, named as the `InputLayer` that made it.

    `keras.models.clone_model` names a clone's inputs after the input tensors, and a tensor made by an
    unnamed `keras.Input` is called `keras_tensor...` while its layer is `input_layer...`: the copy would
    get other layer names than the model (`get_layer("input_layer")` would fail on it, and its config would
    differ). Named inputs, and models loaded from a `.keras` file, have the same name on both.
    """
    history = getattr(tensor, "_keras_history", None)
    layer = history.operation if history is not None else None
    name = layer.name if isinstance(layer, keras.layers.InputLayer) else tensor.name
    # Sparse and ragged inputs stay so (`clone_model` makes them dense): a deployed model keeps taking them;
    # an optional input (`keras.Input(optional=True)`) stays optional (it may be given None).
    flags = {key: True for key in ("sparse", "ragged") if getattr(tensor, key, False)}
    if getattr(layer, "optional", False):
        flags["optional"] = True
    return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name, **flags)


def sequential_input(model):
    """A fresh `keras.Input` like the first input of the built Sequential `model`, with its name."""
    return fresh_input(model.inputs[0])


def clone_functional(model, clone, rewrite_call):
    """`keras.models.clone_model` of a Functional `model` with two hooks.

    `clone(layer)` makes each new layer; `rewrite_call(original, new_layer, args, kwargs)` makes the
    output of each layer call in the new graph (`original` is the layer `new_layer` was cloned from).
    """
    originals = {}

    def clone_function(layer):
        new = clone(layer)
        originals[id(new)] = layer
        return new

    def call_function(layer, *args, **kwargs):
        return rewrite_call(originals.get(id(layer)), layer, args, kwargs)

    inputs = keras.tree.map_structure(fresh_input, model.input)
    new_model = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone_function, call_function=call_function
    )
    if not model.trainable:
        # A frozen model (a backbone) stays frozen: `clone_model` makes a trainable one, and layers added by
        # the hooks (LocalFishers) would otherwise train inside it.
        new_model.trainable = False
    mark_built_on_call(new_model)
    return new_model


def mark_built_on_call(model):
    """Make the layers of the rebuilt `model` for which `builds_on_its_call` holds save no build config
    (the instance's `get_build_config` returns None)."""
    for layer in model.layers:
        if builds_on_its_call(layer):
            object.__setattr__(layer, "get_build_config", types.MethodType(_no_build_config, layer))


def builds_on_its_call(layer):
    """Whether `layer`, in a model `reconstruct` or `fold` rebuilt, saves no build config, so that a
    `.keras` file builds it when the loaded graph first calls it (as the model it came from was built),
    not by `build_from_config`.

    `build_from_config` passes `build` the shapes as the file's JSON holds them, lists, where a call passes
    tuples. Some third-party layers only take tuples (KerasHub 0.32's DeepLabV3 `SpatialPyramidPooling`:
    `input_shape[:-1] + (channels,)` raises `TypeError: can only concatenate list (not "tuple") to list`):
    such a layer loads inside its own model, whose config rebuilds it by calling it, but not as a layer of a
    reconstructed or folded graph. True for layers from outside Keras and this package that define their
    own `build` and keep Keras's default build config (the input shapes only, which the call gives
    anyway); the instance's `get_build_config` then returns None (the class is left alone). A model loaded
    from that file holds the layer as its class builds it: saving the loaded model again as it is meets the
    layer's own bug, `reconstruct` or `fold` of it marks it again.
    """
    kind = type(layer)
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
        return False
    module = kind.__module__ or ""
    if module.split(".")[0] in ("keras", "keras_sngd"):
        return False
    base = keras.layers.Layer
    return (kind.build is not base.build and kind.get_build_config is base.get_build_config
            and kind.build_from_config is base.build_from_config)


def _no_build_config(layer):
    return None


def copy_weights(pairs):
    """Copy weights from each original layer to its clone, for the pairs whose clone is built."""
    for original, clone in pairs:
        if not is_layer(original) or isinstance(original, keras.Model):
            continue  # nested models copied their own
        saved = getattr(original, "_saved_variables", None)
        if saved is not None:
            # A FisherLayer: its state, not the transient carriers it may hold on JAX (`keras_sngd.handoff`).
            for target, source in zip(clone._saved_variables(), saved()):
                target.assign(_copied(source))  # not the original's array (JAX donates the clone's)
            continue
        if original.weights:
            try:
                set_weights_from(original, clone)
            except ValueError as error:
                # A config that rebuilds other weights: a repaired one (`keras_sngd.config_repair`), or one
                # that does not record a change made after building. Either way not the layer.
                raise LayerCloneError(original, error, rebuilt=repair_of(clone) is None) from error
        restore_derived_state(original, clone)


def set_weights_from(original, clone):
    """Copy the variables of `original` (a layer or model) into `clone`, its copy rebuilt from its config.

    By name where both hold the same variables in another order, else in order (`set_weights`). Some
    layers create their variables in another order when rebuilt from their config than when they were
    built and then changed: a Dense layer quantized with `layer.quantize("float8")` holds `kernel, bias`
    and then its six scale and amax-history variables, and the same layer built from its config (whose
    dtype policy says float8) creates the six first. Keras's own saving stores each layer's variables by
    name and does not meet this; `set_weights` copies by position and would fail on the shapes, or, where
    the shapes agree, copy one scale into another. The names compared are the variables' paths below the
    layer's own (`kernel`, `query/kernel`), so a clone under another parent still matches.

    Raises:
        ValueError: the two hold different variables (from `set_weights`).
    """
    source_names = _relative_paths(original)
    target_names = _relative_paths(clone)
    if (
        source_names is not None
        and target_names is not None
        and source_names != target_names
        and len(set(source_names)) == len(source_names)
        and sorted(source_names) == sorted(target_names)
    ):
        by_name = dict(zip(source_names, original.get_weights()))
        clone.set_weights([by_name[name] for name in target_names])
        return
    clone.set_weights(original.get_weights())


def _relative_paths(layer):
    """The paths of `layer`'s variables below the layer's own path, or None where one is not below it."""
    prefix = f"{getattr(layer, 'path', layer.name)}/"
    paths = [getattr(variable, "path", variable.name) for variable in layer.weights]
    if not all(path.startswith(prefix) for path in paths):
        return None
    return [path[len(prefix):] for path in paths]


def restore_derived_state(original, clone):
    """Give `clone` (and its sublayers) the state of `original` that is not variables, as `.keras` saving
    and loading do.

    `set_weights` copies variables only. Some layers keep more, or derive it from their variables when
    they are loaded: an adapted `Normalization` reads its `mean` and `variance` from its variables in
    `load_own_variables` (`finalize_state`), a `Discretization` saves its bin boundaries there, a
    `StringLookup` or `TextVectorization` keeps its vocabulary in a lookup table that `save_assets` writes
    to a file. A clone given only the variables computes something else (an adapted `Normalization`
    normalizes with mean 0 and variance 1) or fails (an uninitialized lookup table). So for every layer
    whose class saves its own way, the clone loads what the original saves: `save_own_variables` into
    `load_own_variables` and `save_assets` into `load_assets`, through a dict and a temporary directory.
    Keras's core Dense, EinsumDense, Embedding and convolution layers are left out: their own way only
    lays out the same variables for quantization or LoRA (merging LoRA into the kernel), which
    `set_weights` has copied already; so is a `FisherLayer`, whose state is copied with its carriers left
    out (`copy_weights`).
    """
    from keras_sngd.fisher_layer import FisherLayer

    for source, target in zip(original._flatten_layers(), clone._flatten_layers()):
        if type(source) is not type(target) or isinstance(source, FisherLayer) or not target.built:
            continue
        if _loads_its_own_way(target, "load_own_variables"):
            store = {}
            source.save_own_variables(store)
            # Copies, not the original's variables: on JAX assigning a variable shares its array, which
            # the clone's training then donates, deleting the original model's weights under it.
            target.load_own_variables({key: _copied(value) for key, value in store.items()})
        if _loads_its_own_way(target, "load_assets"):
            with tempfile.TemporaryDirectory() as directory:
                source.save_assets(directory)
                target.load_assets(directory)


def _copied(value):
    """A NumPy copy of a variable or tensor (other values as they are)."""
    if isinstance(value, keras.Variable) or keras.ops.is_tensor(value):
        return keras.ops.convert_to_numpy(value).copy()
    return value


def _loads_its_own_way(layer, method):
    """Whether `layer`'s class overrides `keras.layers.Layer`'s `method` (`load_own_variables`,
    `load_assets`), outside Keras's core and convolution layers."""
    own = getattr(type(layer), method, None)
    if own is None or own is getattr(keras.layers.Layer, method, None):
        return False
    return not getattr(own, "__module__", "").startswith(("keras.src.layers.core.", "keras.src.layers.convolutional."))


def node_scope(model):
    """The keys of the layer calls in `model`'s own graph (a Sequential's inner Functional), or None for
    `model=None` (every call counts)."""
    if model is None:
        return None
    if isinstance(model, keras.Sequential):
        model = model._functional
        if model is None:
            return set()
    return model._nodes


def walk_layers(model):
    """`(owner, layer)` for every layer of `model` and of the models nested in it, depth first in graph
    order; `owner` is the model whose `layers` list holds `layer`, or for the LocalFishers inside a
    composite layer (`keras_sngd.inner_whitening.InnerWhitening`) that wrapper."""
    for layer in model.layers:
        yield model, layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)
        for fisher in getattr(layer, "_keras_sngd_inner_fishers", lambda: ())():
            yield layer, fisher


def is_layer(operation):
    """False for raw operations in a graph (`x + y`, `x[:, 0]`, `keras.ops.cast`): they hold no weights."""
    return isinstance(operation, keras.layers.Layer)


# Layers that are the identity at inference and only add noise in training (dropout, Gaussian noise) or
# always (`Identity`). A LocalFisher's whitened features pass through them to the layer behind, which
# absorbs `U` there: `dense(dropout(x U))` with kernel `W'` is `dense(x)` with `W = U W'` at inference, and a
# refresh that keeps `U W'` keeps the inference function (in training the noise falls on `x U` rather than
# on `x`; `fold` puts it on `x`). Exact types: a subclass may do anything in its call. (Those this Keras has.)
PASS_THROUGH_TYPES = tuple(
    getattr(keras.layers, name)
    for name in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                 "GaussianNoise", "AlphaDropout", "Identity")
    if hasattr(keras.layers, name)
)


def passes_features_through(operation):
    """Whether `operation` hands a whitened tensor on unchanged for `U`'s purposes: a dtype cast, or a layer
    of `PASS_THROUGH_TYPES` (the identity at inference)."""
    return isinstance(operation, Cast) or type(operation) in PASS_THROUGH_TYPES


def source_operation(tensor):
    """The operation that produced `tensor`, behind any dtype casts (`keras.ops.cast`, or a mixed-precision
    layer's autocast) and layers that are the identity at inference (`PASS_THROUGH_TYPES`)."""
    return source_tensor(tensor)._keras_history.operation


def source_tensor(tensor):
    """`tensor` with the dtype casts and inference-identity layers that produced it walked back."""
    while passes_features_through(tensor._keras_history.operation):
        operation, node_index, _ = tensor._keras_history
        tensor = operation._inbound_nodes[node_index].input_tensors[0]
    return tensor


def first_argument(args, kwargs=None):
    """A call's first positional argument or, without one, its first keyword argument (`dense(inputs=x)`);
    None if it has neither. The argument whose features a layer's kernel mixes."""
    return args[0] if args else next(iter((kwargs or {}).values()), None)


def first_tensor(args, kwargs=None):
    """The symbolic tensor a layer call mixes features of (`first_argument`); None if that is not one
    `KerasTensor`."""
    first = first_argument(args, kwargs)
    return first if isinstance(first, keras.KerasTensor) else None


def with_first_argument(args, kwargs, tensor):
    """`(args, kwargs)` of a call with its first argument (as `first_argument` finds it) replaced by `tensor`."""
    if args:
        return (tensor,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs[next(iter(kwargs))] = tensor
    return args, kwargs


def reads_fixed_features(tensor, inputs_are_fixed=True):
    """Whether `tensor` is computed from the model's inputs by layers without trainable weights only.

    Such a tensor holds fixed features (raw data, preprocessed data, or the output of a frozen backbone):
    training cannot change them, and their second moments are a property of the data. Walks the graph
    back from `tensor`: an `InputLayer` gives `inputs_are_fixed` (False for a nested model called on
    trained features), a layer or nested model with trainable weights (other than a LocalFisher's carriers,
    `keras_sngd.handoff.carrier`) gives False, and any other layer or raw operation gives the answer for
    all of its inputs.
    """
    # Over the operations `tensor` depends on, with a stack (no recursion: graphs can be thousands deep).
    pending, seen = [tensor], set()
    while pending:
        history = getattr(pending.pop(), "_keras_history", None)
        if history is None:
            continue  # a constant
        operation, node_index, _ = history
        if (id(operation), node_index) in seen:
            continue
        seen.add((id(operation), node_index))
        if isinstance(operation, keras.layers.InputLayer):
            if not inputs_are_fixed:
                return False
        elif is_layer(operation) and without_carriers(operation.trainable_weights):
            # (A LocalFisher's carriers are trainable only so that the optimizer writes them: no parameter.)
            return False
        else:
            pending.extend(operation._inbound_nodes[node_index].input_tensors)
    return True


def calls_read_fixed_features(layer, inputs_are_fixed=True):
    """Whether every recorded call of `layer` (its inbound nodes) reads fixed features
    (`reads_fixed_features`); False for a layer never called in a graph."""
    nodes = getattr(layer, "_inbound_nodes", [])
    tensors = [tensor for node in nodes for tensor in node.input_tensors]
    return bool(tensors) and all(reads_fixed_features(tensor, inputs_are_fixed) for tensor in tensors)
