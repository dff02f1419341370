"""A trust region for SNGD: the largest step a consumer layer may take in one training step.

In the reconstructed coordinates the consumer's input `y = x U` is white (`E[y y^T] = U^T G U = I`), so a
change `dW'` of its kernel changes its pre-activations by `E ||y dW'||^2 = ||dW'||_F^2` per example and
output position, and a change `db` of its bias by `||db||^2`: the norm of the step `(dW', db)` is its size
in the function the layer computes, the Fisher (KL) norm of the step with SNGD's input-side Fisher.
Bounding it is K-FAC's KL clipping (Martens & Grosse 2015, section 6.5, re-scaling the update) done per
layer; since the step of plain SGD is `-lr g`, it is `SGD(clipnorm=...)` per layer with a bound that does
not depend on `lr`.
"""

from keras import ops


def bounded_step(values, previous, radius, outputs):
    """`values` moved back toward `previous` so that the joint step is at most `radius * sqrt(outputs)`.

    ```
    step_i = values_i - previous_i                   # e.g. the kernel W' and the bias b
    limit  = radius * sqrt(outputs)                   # radius: RMS change of each output unit
    scale  = min(1, limit / sqrt(sum_i ||step_i||^2))
    values_i <- previous_i + scale * step_i           # same direction, bounded length
    ```

    Args:
        values: list of tensors after the optimizer's update.
        previous: list of tensors before it (same shapes).
        radius: float > 0, the bound per output unit.
        outputs: int >= 1, the number of output units.

    Returns:
        `(values, scale)`: the bounded tensors (their own dtypes) and the float32 scale in (0, 1] (1 where
        the step was within the bound, or not finite: a non-finite step is left for the loss to show).
    """
    steps = [ops.cast(value, "float32") - ops.cast(old, "float32") for value, old in zip(values, previous)]
    norm = ops.sqrt(sum(ops.sum(ops.square(step)) for step in steps))
    limit = float(radius) * float(outputs) ** 0.5
    scale = ops.where(ops.isfinite(norm) & (norm > limit), limit / ops.maximum(norm, 1e-30), 1.0)
    bounded = [
        ops.cast(ops.cast(old, "float32") + scale * step, value.dtype)
        for value, old, step in zip(values, previous, steps)
    ]
    return bounded, scale
