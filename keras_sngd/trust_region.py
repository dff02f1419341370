"""A trust region for SNGD: the largest step a consumer layer may take in one training step.

In the reconstructed coordinates the consumer's input `y = x U` is white (`E[y y^T] = U^T G U = I`), so a
kernel `W'` gives pre-activations of size `E ||y W'||^2 = ||W'||_F^2` per example and output position, and
a step `dW'` changes them by `||dW'||_F^2` (the bias `b` and its step `db` add `||b||^2` and `||db||^2`,
up to the cross term with the input's mean): the norms of `(W', b)` and of the step are the size of the
layer's output and of its change, and the step's norm is its Fisher (KL) norm with SNGD's input-side
Fisher. Bounding the step relative to `(W', b)` bounds the relative change of every layer's output per
step. An absolute bound is not enough: a layer whose inputs are small (deep ReLU layers without
normalization) is whitened by a large `U`, so an absolute change of the layer before it is a large
relative change for it, and the changes compound through the network (docs/stability.md). This is K-FAC's
KL clipping (Martens & Grosse 2015, section 6.5) done per layer and relative to the layer's size, like
LARS's trust ratio (You et al. 2017), and independent of the learning rate.
"""

from keras import ops

from keras_sngd.device_scalars import scalar

# Below this RMS per output unit, (W', b) counts as this size, so that zero-initialized weights can move.
_SMALLEST_SIZE = 1e-3
_TINY = 2.0**-126  # float32's smallest normal


def bounded_step(values, previous, radius, outputs):
    """`values` moved back toward `previous` so that the joint step is at most `radius` times their size.

    ```
    step_i = values_i - previous_i                          # e.g. the kernel W' and the bias b
    limit  = radius * max(sqrt(sum_i ||previous_i||^2), 1e-3 * sqrt(outputs))
    scale  = min(1, limit / sqrt(sum_i ||step_i||^2))
    values_i <- previous_i + scale * step_i                  # same direction, bounded length
    ```

    Args:
        values: list of tensors after the optimizer's update.
        previous: list of tensors before it (same shapes).
        radius: float > 0, the largest relative step.
        outputs: int >= 1, the number of output units (for the smallest size).

    Returns:
        `(values, scale)`: the bounded tensors (their own dtypes) and the float32 scale in (0, 1] (1 where
        the step was within the bound, or not finite: a non-finite step is left for the loss to show).
    """
    # In squares, with one square root: the step runs after every optimizer update, and each operation
    # here is paid on every training step.
    olds = [ops.cast(old, "float32") for old in previous]
    steps = [ops.cast(value, "float32") - old for value, old in zip(values, olds)]
    norm_squared = _sum_of_squares(steps)
    # Python numbers as device scalars (`keras_sngd.device_scalars`): no host copy on PyTorch.
    smallest = scalar(_SMALLEST_SIZE**2 * float(outputs))
    limit_squared = float(radius) ** 2 * ops.maximum(_sum_of_squares(olds), smallest)
    shorten = ops.isfinite(norm_squared) & (norm_squared > limit_squared)
    scale = ops.where(shorten, ops.sqrt(limit_squared / ops.maximum(norm_squared, scalar(_TINY))), scalar(1.0))
    bounded = [ops.cast(old + scale * step, value.dtype) for value, old, step in zip(values, olds, steps)]
    return bounded, scale


def _sum_of_squares(tensors):
    total = ops.sum(ops.square(tensors[0]))
    for tensor in tensors[1:]:
        total = total + ops.sum(ops.square(tensor))
    return total
