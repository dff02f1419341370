"""Who consumes a `LocalFisher`'s output, and whether each consumer can absorb its `U`.

This is the one place that decides it, for the refresh of `LocalFisher` (which re-expresses the consumers'
kernels so that the model's function does not move), for `fold` (which absorbs `U` into them) and for the
`NGD` optimizer (which preconditions their gradients). The rule:

* Every call that takes the layer's output counts, at **every input position** (`Add()([dense(w), w])` has
  two consumers of `w`: the Dense, and the Add at position 1). Dtype casts in the graph (`keras.ops.cast`,
  or the cast a float32 layer makes of a float16 input under mixed precision) are walked through to the
  layers behind them, and so are layers that are the identity at inference (`Dropout`, its spatial and
  Gaussian kinds, `GaussianNoise`, `AlphaDropout`, `Identity`: `keras_sngd.graph.PASS_THROUGH_TYPES`):
  `dense(dropout(x U))` absorbs `U` into the Dense's kernel, which keeps the inference function.
* Into a nested Functional or Sequential model, the consumers are the layers of its graph that take that
  input, judged by the same rule within the nested model (and only if every call of the nested model takes
  the whitened tensor at that input).
* A consumer absorbs `U` only if it is a layer whose kernel can be re-expressed (`keras_sngd.binding`),
  it takes the whitened tensor as an input one of its kernels mixes (its first input; an attention
  layer's query, key or value: each projection that reads it absorbs `U`), on the same feature axis, and
  **every** call of that layer does so: re-expressing the kernel of a layer that is also called on other
  inputs would change the outputs of those calls.
* If one consumer cannot absorb `U`, none does: the refresh of `U` then replaces it (the function moves, a
  warning says why), and `fold` keeps `U` as a standard `Dense` layer on that path.

With a `model`, only the calls that belong to that model's graph count (a layer can appear in several
graphs); without one, every call Keras recorded counts except casts whose result feeds nothing (the
autocast a layer makes inside its own call).
"""

from typing import NamedTuple

import keras
from keras.src.models.functional import Functional
from keras.src.ops.core import Cast
from keras.src.ops.function import make_node_key as _node_key

from keras_sngd.binding import argument_tensor
from keras_sngd.binding import bindings_for
from keras_sngd.graph import node_scope
from keras_sngd.graph import passes_features_through
from keras_sngd.graph import source_operation
from keras_sngd.graph import source_tensor

NO_CONSUMER = "no consumer layer in a model graph"
# A LocalFisher called in a model graph whose output no layer takes: a model output (a layer put last by
# mistake). Unlike `NO_CONSUMER` (a layer used on its own, outside a graph), this warns.
FEEDS_NOTHING = (
    "it feeds no layer: its output is a model output, which each refresh changes (put a LocalFisher right "
    "before the Dense, Conv or RNN layer it preconditions)"
)


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
            (`NO_CONSUMER` when nothing consumes the output outside a graph, `FEEDS_NOTHING` in one).
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

    def comes_from(tensor):
        return source_operation(tensor) is local_fisher

    found = {}
    for tensor in _outputs(local_fisher, scope):
        for node, position in _uses(tensor, scope):
            for consumer in _judge(local_fisher, node, position, tensor, scope, comes_from):
                # One entry per kernel of the operation (a Bidirectional layer has two).
                key = (id(consumer.operation), 0 if consumer.binding is None else consumer.binding.part)
                previous = found.get(key)
                if previous is None or (previous.binding is not None and consumer.binding is None):
                    found[key] = consumer
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
        return Absorption([], FEEDS_NOTHING if local_fisher._inbound_nodes else NO_CONSUMER)
    for consumer in consumers:
        if consumer.binding is None:
            return Absorption([], f"consumer '{consumer.operation.name}': {consumer.reason}")
    return Absorption([consumer.binding for consumer in consumers], None)


def _outputs(operation, scope):
    """The output tensors of `operation`'s calls within `scope`."""
    return [tensor for node in _calls(operation, scope) for tensor in node.output_tensors]


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
            elif passes_features_through(node.operation):
                # Dropout, noise, Identity: the layers behind it consume; if none does (a model output),
                # the layer itself is the use (it has no kernel: `U` cannot be absorbed).
                behind = [use for output in node.output_tensors for use in _uses(output, scope)]
                uses.extend(behind or [(node, position)])
            else:
                uses.append((node, position))
    return uses


def _judge(local_fisher, node, position, tensor, scope, comes_from):
    """The `Consumer`s for one use of the whitened `tensor`: `node` takes it at `position`. `comes_from(t)`
    says whether a tensor of this graph carries the whitened features."""
    operation = node.operation

    def refuse(reason):
        return [Consumer(operation, position, None, reason)]

    if not isinstance(operation, keras.layers.Layer):
        return refuse(f"{type(operation).__name__} is an operation on tensors, not a layer with a kernel")
    if isinstance(operation, keras.Model):
        return _judge_nested(local_fisher, node, position, scope, comes_from)
    bindings, reason = bindings_for(operation)
    if not bindings:
        return refuse(f"{reason} (a LocalFisher goes right before the layer whose kernel reads its features)")
    # The kernels that mix this input: the layer's own (its first argument), or an attention layer's
    # projections of the argument at this position (query; key and value).
    argument = node.input_tensors[position] if position < len(node.input_tensors) else None
    mixing = [each for each in bindings if _argument(node, each) is argument]
    if argument is None or not mixing:
        return refuse(f"takes this LocalFisher's output as input {position}, not as the input its kernel mixes")
    rank = local_fisher.input_spec.ndim
    for binding in mixing:
        if (binding.feature_axis % rank != local_fisher.axis % rank
                or binding.features != local_fisher.inverse_root.shape[0]):
            return refuse(f"takes features on axis {binding.feature_axis}, this LocalFisher whitens axis {local_fisher.axis}")
        if local_fisher.center and binding.centering:
            return refuse(f"center=True, but {binding.centering}")
    for call in _calls(operation, scope):
        for binding in mixing:
            found = _argument(call, binding)
            if found is None or not comes_from(found):
                return refuse(
                    "the layer is also called on inputs that do not come from this LocalFisher: re-expressing "
                    "its kernel would change the outputs of those calls"
                )
    return [Consumer(operation, position, each, None) for each in mixing]


def _judge_nested(local_fisher, node, position, scope, comes_from):
    """The consumers inside a nested Functional/Sequential model that takes the whitened tensor as its
    input `position`: the layers of its graph that take that input, judged within the nested model."""
    model = node.operation
    inner_scope = node_scope(model) if isinstance(model, (Functional, keras.Sequential)) else None
    if inner_scope is None or not model.inputs:
        return [Consumer(model, position, None, "a nested model with no layer graph (a subclassed model)")]
    for call in _calls(model, scope):
        if not comes_from(call.input_tensors[position]):
            return [Consumer(model, position, None, (
                "a nested model also called on inputs that do not come from this LocalFisher: re-expressing "
                "its layers would change the outputs of those calls"
            ))]
    inner_input = model.inputs[position]

    def inner_comes_from(tensor):
        return source_tensor(tensor) is inner_input

    return [
        consumer
        for inner_node, inner_position in _uses(inner_input, inner_scope)
        for consumer in _judge(local_fisher, inner_node, inner_position, inner_input, inner_scope, inner_comes_from)
    ]


def _calls(operation, scope):
    """The nodes of `operation`'s calls within `scope`."""
    return [
        node for index, node in enumerate(operation._inbound_nodes)
        if scope is None or _node_key(operation, index) in scope
    ]


def _argument(node, binding):
    """The tensor of a call whose features `binding`'s kernel mixes (`keras_sngd.binding.argument_tensor`):
    its first argument, or an attention layer's query, key or value."""
    return argument_tensor(binding, node.arguments.args, node.arguments.kwargs)


def _in_scope(node, scope):
    operation = node.operation
    return _node_key(operation, operation._inbound_nodes.index(node)) in scope


