"""Cross-replica reductions for the statistics of `LocalFisher` under data parallelism.

Under data parallelism each replica sees only its share of the global batch. `LocalFisher` estimates
`E[x x^T]` of the global batch, so every replica must whiten with the same `G^(-1/2)`; it therefore
all-reduces *sums* (not means, so that unequal shares weigh correctly) before dividing, as
`keras.layers.BatchNormalization(synchronized=True)` does on the TensorFlow backend:

```
sum_xx = sum over replicas r of X_r^T X_r        # (d, d)
sum_x  = sum over replicas r of 1^T X_r          # (d,)
count  = sum over replicas r of n_r              # ()
E[x x^T] = sum_xx / count,  E[x] = sum_x / count
```

How each backend distributes:

- **TensorFlow `tf.distribute`** (`MirroredStrategy`, `MultiWorkerMirroredStrategy`, `TPUStrategy`):
  the train step runs once per replica inside a replica context, and `sum_across_replicas` is one
  batched `all_reduce(SUM)` of the list. The layer's state variables keep Keras's defaults
  (`aggregation="none"`, `synchronization="auto"`): under the strategy they are mirrored, and each
  replica assigns its own copy. The copies stay identical because every replica computes them from
  the same all-reduced sums (the statistics, then the same refresh of `U`, then the same counters); an
  aggregating variable (`"mean"`) would average values that are already equal, at the cost of another
  all-reduce per variable.
- **JAX `keras.distribution.DataParallel`**: the train step is one program over the *global* batch,
  sharded by XLA; sums over the batch are already global (XLA inserts the all-reduce), so nothing is
  needed here: the identity.
- One device, or outside a replica context: the identity.
"""

import keras


def sum_across_replicas(values):
    """Each tensor of the list `values` summed over the replicas of the current data-parallel strategy.

    On the TensorFlow backend inside a `tf.distribute` replica context with more than one replica in
    sync, this is one `ReplicaContext.all_reduce(SUM, values)`; everywhere else (one device, the
    cross-replica context, JAX `keras.distribution` whose programs see the global batch, PyTorch) it is
    the identity.

    Args:
        values: list of tensors; every replica must pass the same shapes in the same order.

    Returns:
        A list of tensors, the sums, in the order of `values`.

    Example:

    ```python
    sum_xx, sum_x, count = sum_across_replicas([ops.matmul(ops.transpose(x), x), ops.sum(x, 0), n])
    ```
    """
    values = list(values)
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    import tensorflow as tf

    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, values))


def replicas_in_sync():
    """How many replicas share the global batch: `num_replicas_in_sync` inside a `tf.distribute` replica
    context, 1 everywhere else (one device, JAX `keras.distribution`, whose programs see the global batch)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def in_replica_context():
    """Whether the code runs inside a `tf.distribute` replica context with more than one replica."""
    context = _replica_context()
    return context is not None and context.num_replicas_in_sync > 1


def _replica_context():
    """The `tf.distribute` replica context, or None off TensorFlow and in the cross-replica context."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context()
