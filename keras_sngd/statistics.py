"""Running input statistics behind the local Fisher matrix `G = E(v_f) * E(x x^T)`.

Pure functions of tensors (no layer state), so that the layers and the tests share one definition.
Everything here is computed in float32, whatever the input's dtype.
"""

from typing import NamedTuple

from keras import ops

from keras_sngd.device_scalars import scalar
from keras_sngd.distributed import sum_across_replicas
from keras_sngd.linear_algebra import trace


class BatchMoments(NamedTuple):
    """The moments of one batch (over every replica), float32.

    Attributes:
        second_moment: `(d, d)`, `E[x x^T]` over the unmasked rows.
        mean: `(d,)`, `E[x]` over the unmasked rows.
        count: scalar, the number of unmasked rows (summed over replicas).
    """

    second_moment: object
    mean: object
    count: object


class MovingMoments(NamedTuple):
    """The exponential moving average after one batch.

    Attributes:
        second_moment: `(d, d)`, the EMA of `E[x x^T]` (not yet divided by `weight`).
        mean: `(d,)`, the EMA of `E[x]`.
        weight: scalar, the EMA of 1, which `local_fisher_matrix` divides out.
        accepted: boolean scalar, False when the batch was skipped (non-finite, or no unmasked row).
    """

    second_moment: object
    mean: object
    weight: object
    accepted: object


def batch_moments(inputs, axis=-1, mask=None):
    """Second moment and mean of the features on `axis`, over every other axis and every replica.

    For `x` of shape `(batch, ..., d)` (features moved to the last axis) flattened to rows `x_r` with
    weights `m_r` (the mask, 1 where there is none):

    ```
    sums = [sum_r m_r x_r x_r^T, sum_r m_r x_r, sum_r m_r]     # summed over replicas, then:
    second_moment = sums[0] / sums[2]        # E[x x^T], (d, d)
    mean          = sums[1] / sums[2]        # E[x],     (d,)
    ```

    Before a Dense layer the rows are the batch; before a Conv layer they are every pixel of every image
    (channel statistics); before an RNN they are every time step of every sequence. Masked rows (padding,
    as `BatchNormalization` treats it) are left out. The sums, not the means, are reduced across replicas
    (`keras_sngd.distributed.sum_across_replicas`), so every replica sees the moments of the global batch
    even when replicas hold different numbers of unmasked rows.

    Args:
        inputs: tensor with at least 2 dimensions.
        axis: the feature axis. Defaults to `-1`.
        mask: None, or a boolean tensor of the input's shape without the feature axis (a Keras mask, e.g.
            from `Embedding(mask_zero=True)`): rows where it is False are left out. Defaults to `None`.

    Returns:
        `BatchMoments(second_moment, mean, count)`, float32, gradients stopped. With no unmasked row the
        moments are zero and `count` is 0.
    """
    rows, count = _rows(inputs, axis, mask)
    outer_sum = ops.matmul(ops.transpose(rows), rows)
    row_sum = ops.sum(rows, axis=0)
    outer_sum, row_sum, count = sum_across_replicas([outer_sum, row_sum, count])
    safe_count = ops.maximum(count, 1.0)
    return BatchMoments(outer_sum / safe_count, row_sum / safe_count, count)


def _rows(inputs, axis, mask):
    """`(rows, count)`: the features on `axis` as float32 rows `(n, d)` without gradient, masked rows zeroed,
    and the number of unmasked rows."""
    features = ops.moveaxis(ops.stop_gradient(inputs), axis, -1)
    rows = ops.cast(ops.reshape(features, (-1, features.shape[-1])), "float32")
    if mask is None:
        count = ops.shape(rows)[0]
        # A static row count is a Python int: made on the device (`keras_sngd.device_scalars`).
        return rows, scalar(float(count)) if isinstance(count, int) else ops.cast(count, "float32")
    keep = ops.reshape(ops.cast(mask, "bool"), (-1,))
    # `where`, not a product: a padded row may hold anything, even NaN, and must not reach the sums.
    return ops.where(keep[:, None], rows, scalar(0.0)), ops.sum(ops.cast(keep, "float32"))


def update_moving_moments(moving_second_moment, moving_mean, weight, second_moment, mean, momentum, count=None):
    """One step of the exponential moving average, skipping a batch whose moments are not finite.

    ```
    moving <- momentum * moving + (1 - momentum) * batch
    weight <- momentum * weight + (1 - momentum)        # the EMA of 1: divides out the zero start
    ```

    `moving / weight` is the bias-corrected average (as in Adam): the first batch counts fully instead
    of being shrunk toward the zero initial value. A batch with a NaN or Inf anywhere (found from the
    trace of its second moment, which any non-finite entry of the input reaches, and the sum of its mean)
    or with `count == 0` (everything masked) leaves all three unchanged, so one bad batch cannot poison
    every later estimate.

    Returns:
        `MovingMoments(second_moment, mean, weight, accepted)`.
    """
    accepted = ops.isfinite(trace(second_moment)) & ops.isfinite(ops.sum(mean))
    if count is not None:
        accepted = accepted & (count > 0)
    keep = 1.0 - momentum
    new_second_moment = momentum * moving_second_moment + keep * ops.where(accepted, second_moment, 0.0)
    new_mean = momentum * moving_mean + keep * ops.where(accepted, mean, 0.0)
    new_weight = momentum * weight + keep
    return MovingMoments(
        ops.where(accepted, new_second_moment, moving_second_moment),
        ops.where(accepted, new_mean, moving_mean),
        ops.where(accepted, new_weight, weight),
        accepted,
    )


def accumulate_moments(moving_second_moment, moving_mean, weight, inputs, momentum, axis=-1, mask=None):
    """`update_moving_moments(..., *batch_moments(inputs, axis, mask), momentum)` in fewer passes over `(d, d)`.

    The same exponential moving average, computed the way a training step can afford it every batch:

    ```
    c       = (1 - momentum) / count                    # count: unmasked rows over every replica
    x_r    <- sqrt(c) x_r                                # scales the (rows, d) batch, not the (d, d) result
    moving <- momentum * moving + sum_r x_r x_r^T        # one product, one scale, one add
    ```

    The batch is accepted when the sum of its squares and the sum of its rows are finite (any NaN or Inf
    in the input reaches both, and so does an overflow of the products) and `count > 0`; a rejected batch
    leaves the moments unchanged (its rows are replaced by zeros and the decay by 1). Without XLA every
    elementwise operation is a pass over memory of its own. Where a batch has few rows per feature (before a
    Dense layer) the rows are scaled and the wide `(d, d)` matrix sees three passes (scale, add, the write
    of the state) where the two-step form makes seven; where it has many (the pixels before a convolution,
    the time steps before a recurrent layer) the rows are read only by the product and the row sum, and
    the scaling and the finite check (from the trace of `sum_r x_r x_r^T`) act on the small matrix.

    Args:
        moving_second_moment, moving_mean, weight: the moving state, as in `update_moving_moments`.
        inputs: the batch, as in `batch_moments`.
        momentum: float in [0, 1).
        axis: the feature axis. Defaults to `-1`.
        mask: None or a boolean mask of the input's shape without the feature axis. Defaults to `None`.

    Returns:
        `MovingMoments(second_moment, mean, weight, accepted)`, equal to the two-step form to float32
        rounding.
    """
    rows, count = _rows(inputs, axis, mask)
    keep_fraction = 1.0 - momentum
    # The numbers as device scalars (`keras_sngd.device_scalars`): no host copy on PyTorch.
    zero, one = scalar(0.0), scalar(1.0)
    if _matrix_major(inputs.shape, axis):
        # Many rows per feature (convolutions, sequences): passes over the rows cost more than passes over
        # the small (d, d) matrix, so the rows are read by the product and the sum only.
        outer_sum, row_sum, count = sum_across_replicas(
            [ops.matmul(ops.transpose(rows), rows), ops.sum(rows, axis=0), count]
        )
        accepted = ops.isfinite(trace(outer_sum)) & ops.isfinite(ops.sum(row_sum)) & (count > 0)
        factor = keep_fraction / ops.maximum(count, one)
        outer = ops.where(accepted, outer_sum * factor, zero)
    else:
        # Few rows (Dense layers): the rows are scaled instead of the wide (d, d) result.
        row_sum = ops.sum(rows, axis=0)
        square_sum = ops.sum(ops.square(rows))
        row_sum, square_sum, count = sum_across_replicas([row_sum, square_sum, count])
        accepted = ops.isfinite(square_sum) & ops.isfinite(ops.sum(row_sum)) & (count > 0)
        factor = keep_fraction / ops.maximum(count, one)
        # `where`, not only a zero scale: a rejected batch may hold NaN, and 0 * NaN is NaN.
        scaled = ops.where(accepted, rows, zero) * ops.where(accepted, ops.sqrt(factor), zero)
        (outer,) = sum_across_replicas([ops.matmul(ops.transpose(scaled), scaled)])
    decay = ops.where(accepted, scalar(float(momentum)), one)
    return MovingMoments(
        decay * moving_second_moment + outer,
        decay * moving_mean + ops.where(accepted, row_sum * factor, zero),
        decay * weight + ops.where(accepted, scalar(float(keep_fraction)), zero),
        accepted,
    )


# A batch size typical of training, to compare the size of the rows with the size of the (d, d) matrix.
_NOMINAL_BATCH = 32


def _matrix_major(shape, axis=-1):
    """Whether a batch of this shape has more row entries than `G` has: `positions * 32 > d`, with `d` the
    size on `axis` and `positions` the rows per example (the sizes off the batch and feature axes: pixels,
    time steps; unknown sizes count as many)."""
    axis = axis % len(shape)
    positions = 1
    for index, size in enumerate(shape[1:], start=1):
        if index != axis:
            positions *= _NOMINAL_BATCH if size is None else size
    return positions * _NOMINAL_BATCH > shape[axis]


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
