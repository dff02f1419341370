"""Shared helpers for rewriting Keras model graphs (`reconstruct` and `fold`)."""

import keras
from keras.src.models.functional import Functional
from keras.src.ops.function import make_node_key


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
    """A fresh layer with the same config (weights are copied once the new model is built)."""
    return layer.__class__.from_config(layer.get_config())


def sequential_input(model):
    """A fresh `keras.Input` like the first input of the built Sequential `model`."""
    return keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)


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

    return keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)


def copy_weights(pairs):
    """Copy weights from each original layer to its clone, for the pairs whose clone is built."""
    for original, clone in pairs:
        if isinstance(original, keras.Model):
            continue  # nested models copied their own
        values = original.get_weights()
        if values:
            clone.set_weights(values)


def consumers_in(model, layer):
    """The layers of `model` that take `layer`'s output as their first input, in graph order."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        index = layers.index(layer)
        return layers[index + 1 : index + 2]
    consumers = []
    own = model._nodes
    for node in layer._outbound_nodes:
        operation = node.operation
        key = make_node_key(operation, operation._inbound_nodes.index(node))
        if key in own and node.input_tensors and node.input_tensors[0]._keras_history.operation is layer:
            if operation not in consumers:
                consumers.append(operation)
    return consumers


def producers_in(model, layer):
    """For each call of `layer` in `model`, the layer that produced its first input."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        index = layers.index(layer)
        return [layers[index - 1]] if index > 0 else [None]
    producers = []
    for index, node in enumerate(layer._inbound_nodes):
        if make_node_key(layer, index) in model._nodes and node.input_tensors:
            producers.append(node.input_tensors[0]._keras_history.operation)
    return producers


def first_tensor(args):
    """The tensor a layer call mixes features of, or None if its first argument is not one tensor."""
    if args and isinstance(args[0], keras.KerasTensor):
        return args[0]
    return None
