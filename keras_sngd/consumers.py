"""Who consumes a `LocalFisher`'s output, and whether each consumer can absorb its `U`."""

from keras_sngd.binding import binding_for


def consumer_bindings(local_fisher):
    """`(bindings, reason)` for the layers that `local_fisher` feeds.

    The consumers are found in the model graph (the layer's outbound nodes), so this works for a
    LocalFisher inserted by hand, by `reconstruct`, or loaded from a `.keras` file. `bindings` is empty,
    and `reason` says why, when some consumer's weights cannot absorb `U` (see `keras_sngd.binding`) or
    there is no consumer in a graph.
    """
    consumers = []
    for node in local_fisher._outbound_nodes:
        if node.operation not in consumers:
            consumers.append(node.operation)
    if not consumers:
        return [], "no consumer layer in a model graph"
    rank = local_fisher.input_spec.ndim
    own_axis = local_fisher.axis % rank
    bindings = []
    for consumer in consumers:
        binding, reason = binding_for(consumer)
        if binding is None:
            return [], f"consumer '{consumer.name}': {reason}"
        if binding.feature_axis % rank != own_axis or binding.features != local_fisher.inverse_root.shape[0]:
            return [], (f"consumer '{consumer.name}' takes features on axis {binding.feature_axis}, "
                        f"this layer whitens axis {local_fisher.axis}")
        if local_fisher.center and binding.centering:
            return [], f"center=True but consumer '{consumer.name}': {binding.centering}"
        bindings.append(binding)
    return bindings, None
