"""A trust region for SNGD: the largest step a consumer's whitened kernel may take in one training step.

In the reconstructed coordinates the consumer's input `y = x U` is white (`E[y y^T] = U^T G U = I`), so a
change `dW'` of its kernel changes its pre-activations by `E ||y dW'||^2 = ||dW'||_F^2` per example and
output position: the Frobenius norm of the step is its size in the function the layer computes, the
Fisher (KL) norm of the step with SNGD's input-side Fisher. Bounding it is K-FAC's KL clipping (Martens &
Grosse 2015, section 6.5, "re-scaling" the update) done per layer, and, since the step of plain SGD on `W'`
is `-lr g'`, it is `SGD(clipnorm=...)` on the whitened kernel with a bound that does not depend on `lr`.
"""

from keras import ops


def bounded_step(kernel, previous, radius, outputs):
    """`kernel` moved back toward `previous` so that the step is at most `radius * sqrt(outputs)`.

    ```
    step  = kernel - previous
    limit = radius * sqrt(outputs)          # radius: RMS change of each output unit's pre-activation
    scale = min(1, limit / ||step||_F)
    kernel <- previous + scale * step       # same direction, bounded length
    ```

    Args:
        kernel: the kernel after the optimizer's update.
        previous: the kernel before it (same shape).
        radius: float > 0, the bound per output unit.
        outputs: int >= 1, the number of output units (the kernel's last axis).

    Returns:
        `(kernel, scale)`: the bounded kernel (the input's dtype) and the float32 scale in (0, 1] (1 where
        the step was within the bound, or not finite: a non-finite step is left for the loss to show).
    """
    step = ops.cast(kernel, "float32") - ops.cast(previous, "float32")
    norm = ops.sqrt(ops.sum(ops.square(step)))
    limit = float(radius) * float(outputs) ** 0.5
    scale = ops.where(ops.isfinite(norm) & (norm > limit), limit / ops.maximum(norm, 1e-30), 1.0)
    bounded = ops.cast(previous, "float32") + scale * step
    return ops.cast(bounded, kernel.dtype), scale
