"""Who consumes a `LocalFisher`'s output, and whether each consumer can absorb its `U`.

This is the one place that decides it, for the refresh of `LocalFisher` (which re-expresses the consumers'
kernels so that the model's function does not move), for `fold` (which absorbs `U` into them) and for the
`NGD` optimizer (which preconditions their gradients). The rule:

* Every call that takes the layer's output counts, at **every input position** (`Add()([dense(w), w])` has
  two consumers of `w`: the Dense, and the Add at position 1). Dtype casts in the graph (`keras.ops.cast`,
  or the cast a float32 layer makes of a float16 input under mixed precision) are walked through to the
  layers behind them.
* A consumer absorbs `U` only if it is a layer whose kernel can be re-expressed (`keras_sngd.binding`),
  it takes the whitened tensor as its first input, on the same feature axis, and **every** call of that
  layer does so: re-expressing the kernel of a layer that is also called on other inputs would change the
  outputs of those calls.
* If one consumer cannot absorb `U`, none does: the refresh of `U` then replaces it (the function moves, a
  warning says why), and `fold` keeps `U` as a standard `Dense` layer on that path.

With a `model`, only the calls that belong to that model's graph count (a layer can appear in several
graphs); without one, every call Keras recorded counts except casts whose result feeds nothing (the
autocast a layer makes inside its own call).
"""

from typing import NamedTuple

import keras
from keras.src.ops.core import Cast
from keras.src.ops.function import make_node_key as _node_key

from keras_sngd.binding import binding_for
from keras_sngd.graph import node_scope
from keras_sngd.graph import source_operation
from keras_sngd.graph import source_tensor

NO_CONSUMER = "no consumer layer in a model graph"


class Consumer(NamedTuple):
    """One operation that takes a `LocalFisher`'s output.

    Attributes:
        operation: the layer (or raw operation, such as the `Add` of `x + y`) that takes the output, after
            walking through dtype casts.
        position: the output's index among the call's flattened inputs (0: the first input).
        binding: a `keras_sngd.binding.Binding` if the operation can absorb `U`, else None.
        reason: None if it can, else why not.
    """

    operation: object
    position: int
    binding: object
    reason: object


class Absorption(NamedTuple):
    """Whether the consumers of a `LocalFisher` absorb its `U`.

    Attributes:
        bindings: one `Binding` per consumer when every consumer can absorb `U`, else empty.
        reason: None when `bindings` is complete, else why `U` cannot be absorbed
            (`NO_CONSUMER` when nothing consumes the output).
    """

    bindings: list
    reason: object


def consumers_of(local_fisher, model=None):
    """Every operation that takes `local_fisher`'s output, with whether it can absorb `U`.

    Args:
        local_fisher: a built `LocalFisher` (or `FisherStatistics`) that has been called in a graph.
        model: the Functional or Sequential model whose graph counts, or None for every graph the layer
            was called in. Defaults to `None`.

    Returns:
        A list of `Consumer`, one per consuming operation, in graph order. An operation that takes the
        output at several positions appears once, with the reason of a position that cannot absorb `U`.
    """
    scope = node_scope(model)
    found = {}
    for tensor in _outputs(local_fisher, scope):
        for node, position in _uses(tensor, scope):
            consumer = _judge(local_fisher, node, position, tensor, scope)
            previous = found.get(id(consumer.operation))
            if previous is None or (previous.binding is not None and consumer.binding is None):
                found[id(consumer.operation)] = consumer
    return list(found.values())


def consumer_bindings(local_fisher, model=None):
    """`Absorption(bindings, reason)` for the layers that `local_fisher` feeds (see the module docstring).

    The consumers are found in the model graph (the layer's outbound nodes), so this works for a
    LocalFisher inserted by hand, by `reconstruct`, or loaded from a `.keras` file.

    Args:
        local_fisher: a built `LocalFisher`.
        model: the model whose graph counts, or None for every graph. Defaults to `None`.

    Returns:
        `Absorption`: unpacks as `bindings, reason`.
    """
    consumers = consumers_of(local_fisher, model)
    if not consumers:
        return Absorption([], NO_CONSUMER)
    for consumer in consumers:
        if consumer.binding is None:
            return Absorption([], f"consumer '{consumer.operation.name}': {consumer.reason}")
    return Absorption([consumer.binding for consumer in consumers], None)


def _outputs(operation, scope):
    """The output tensors of `operation`'s calls within `scope`."""
    outputs = []
    for index, node in enumerate(operation._inbound_nodes):
        if scope is None or _node_key(operation, index) in scope:
            outputs.extend(node.output_tensors)
    return outputs


def _uses(tensor, scope):
    """`(node, position)` for every call that takes `tensor`, looking through dtype casts."""
    operation = tensor._keras_history.operation
    uses = []
    for node in operation._outbound_nodes:
        if scope is not None and not _in_scope(node, scope):
            continue
        for position, argument in enumerate(node.input_tensors):
            if argument is not tensor:
                continue
            if isinstance(node.operation, Cast):
                cast_uses = [use for output in node.output_tensors for use in _uses(output, scope)]
                if cast_uses or scope is not None:
                    uses.extend(cast_uses)
                # Unscoped, a cast whose result feeds nothing is a layer's own autocast of `tensor`.
            else:
                uses.append((node, position))
    return uses


def _judge(local_fisher, node, position, tensor, scope):
    """The `Consumer` for one use of the whitened `tensor`: `node` takes it at `position`."""
    operation = node.operation

    def refuse(reason):
        return Consumer(operation, position, None, reason)

    if not isinstance(operation, keras.layers.Layer):
        return refuse(f"{type(operation).__name__} is an operation on tensors, not a layer with a kernel")
    if isinstance(operation, keras.Model):
        return refuse("a nested model: the layers inside it are not re-expressed")
    binding, reason = binding_for(operation)
    if binding is None:
        return refuse(reason)
    first = _first_argument(node)
    if position != 0 or first is None or source_tensor(first) is not tensor:
        return refuse(f"takes this LocalFisher's output as input {position}, not as the input its kernel mixes")
    rank = local_fisher.input_spec.ndim
    if binding.feature_axis % rank != local_fisher.axis % rank or binding.features != local_fisher.inverse_root.shape[0]:
        return refuse(f"takes features on axis {binding.feature_axis}, this LocalFisher whitens axis {local_fisher.axis}")
    if local_fisher.center and binding.centering:
        return refuse(f"center=True, but {binding.centering}")
    for index, call in enumerate(operation._inbound_nodes):
        if scope is not None and _node_key(operation, index) not in scope:
            continue
        first = _first_argument(call)
        if first is None or source_operation(first) is not local_fisher:
            return refuse(
                "the layer is also called on inputs that do not come from this LocalFisher: re-expressing its "
                "kernel would change the outputs of those calls"
            )
    return Consumer(operation, position, binding, None)


def _first_argument(node):
    """The tensor a call's kernel mixes: its first positional argument (or first keyword argument)."""
    arguments = node.arguments
    first = arguments.args[0] if arguments.args else next(iter(arguments.kwargs.values()), None)
    return first if isinstance(first, keras.KerasTensor) else None


def _in_scope(node, scope):
    operation = node.operation
    return _node_key(operation, operation._inbound_nodes.index(node)) in scope


