"""Running input statistics behind the local Fisher matrix `G = E(v_f) * E(x x^T)`.

Pure functions of tensors (no layer state), so that the layer, the later `reconstruct`/NGD code and the
tests share one definition. Everything here is computed in float32, whatever the input's dtype.
"""

from keras import ops


def batch_moments(inputs, axis=-1):
    """Second moment and mean of the features on `axis`, over every other axis.

    For `x` of shape `(batch, ..., d)` (features moved to the last axis) flattened to `n` rows:

    ```
    second_moment = x^T x / n        # E[x x^T], (d, d)
    mean          = sum(x) / n       # E[x],     (d,)
    ```

    Before a Dense layer the rows are the batch; before a Conv layer they are every pixel of every image
    (channel statistics); before an RNN they are every time step of every sequence.

    Args:
        inputs: tensor with at least 2 dimensions.
        axis: the feature axis. Defaults to `-1`.

    Returns:
        `(second_moment, mean)`, float32, gradients stopped.
    """
    features = ops.moveaxis(ops.stop_gradient(inputs), axis, -1)
    dim = features.shape[-1]
    rows = ops.cast(ops.reshape(features, (-1, dim)), "float32")
    count = ops.cast(ops.shape(rows)[0], "float32")
    second_moment = ops.matmul(ops.transpose(rows), rows) / count
    mean = ops.sum(rows, axis=0) / count
    return second_moment, mean


def update_moving_moments(moving_second_moment, moving_mean, weight, second_moment, mean, momentum):
    """One step of the exponential moving average, skipping a batch whose moments are not finite.

    ```
    moving <- momentum * moving + (1 - momentum) * batch
    weight <- momentum * weight + (1 - momentum)        # the EMA of 1: divides out the zero start
    ```

    `moving / weight` is the bias-corrected average (as in Adam): the first batch counts fully instead
    of being shrunk toward the zero initial value. A batch with a NaN or Inf anywhere leaves all three
    unchanged, so one bad batch cannot poison every later estimate.

    Returns:
        `(moving_second_moment, moving_mean, weight, accepted)`; `accepted` is a boolean scalar.
    """
    accepted = ops.all(ops.isfinite(second_moment)) & ops.all(ops.isfinite(mean))
    keep = 1.0 - momentum
    new_second_moment = momentum * moving_second_moment + keep * ops.where(accepted, second_moment, 0.0)
    new_mean = momentum * moving_mean + keep * ops.where(accepted, mean, 0.0)
    new_weight = momentum * weight + keep
    return (
        ops.where(accepted, new_second_moment, moving_second_moment),
        ops.where(accepted, new_mean, moving_mean),
        ops.where(accepted, new_weight, weight),
        accepted,
    )


def local_fisher_matrix(moving_second_moment, moving_mean, weight, center=False, activation_factor=1.0):
    """The local Fisher matrix from the moving moments (paper: `G_k = E(v_f) E(x x^T)`).

    ```
    E[x x^T] = moving_second_moment / weight,  E[x] = moving_mean / weight
    G = activation_factor * E[x x^T]                         (center=False)
    G = activation_factor * (E[x x^T] - E[x] E[x]^T)         (center=True: the covariance)
    ```

    Before any statistics (`weight == 0`) this is the zero matrix, which `newton_schulz` rejects.
    """
    safe_weight = ops.maximum(weight, 1e-30)
    second_moment = moving_second_moment / safe_weight
    if center:
        mean = moving_mean / safe_weight
        second_moment = second_moment - ops.outer(mean, mean)
    # Symmetrize: the EMA of symmetric matrices drifts by rounding, and the iteration assumes symmetry.
    second_moment = 0.5 * (second_moment + ops.transpose(second_moment))
    return activation_factor * second_moment
