"""Replacing `G^(-1/2)` by a new estimate, guarded against bad estimates."""

from keras import ops

from keras_sngd.newton_schulz import newton_schulz

# A converged float32 iteration ends with a residual ||Z Y - I|| / sqrt(d) of 1e-7 to 1e-4 (condition
# numbers up to 1e6, d up to 1024); a larger one means the estimate did not converge.
ACCEPTED_RESIDUAL = 1e-3


def refresh_inverse_root(fisher, inverse_root, damping, iterations=None, dtype="float32"):
    """A new inverse root of the local Fisher matrix, or the old one if the new one is bad.

    ```
    root, new_inverse_root = newton_schulz(fisher + damping * mean_eigenvalue * I)
    accepted = all finite and ||Z Y - I|| / sqrt(d) <= 1e-3
    inverse_root <- new_inverse_root if accepted else inverse_root
    ```

    Args:
        fisher: `(d, d)` float32 local Fisher matrix.
        inverse_root: `(d, d)` float32, the current `G^(-1/2)`, kept on failure.
        damping: relative damping, see `newton_schulz`.
        iterations: fixed iteration count, or None for the residual stopping rule.
        dtype: the dtype of the iteration, `"float32"` or `"float64"`.

    Returns:
        `(inverse_root, root, accepted)`: float32 `(d, d)` matrices and a boolean scalar. On failure,
        `root` is the inverse of the kept `inverse_root` only in name: callers must check `accepted`.
    """
    root, new_inverse_root, residual = newton_schulz(
        fisher, damping=damping, iterations=iterations, dtype=dtype, return_residual=True
    )
    root = ops.cast(root, "float32")
    new_inverse_root = ops.cast(new_inverse_root, "float32")
    accepted = (
        ops.isfinite(residual)
        & (residual <= ACCEPTED_RESIDUAL)
        & ops.all(ops.isfinite(new_inverse_root))
        & ops.all(ops.isfinite(root))
    )
    return ops.where(accepted, new_inverse_root, inverse_root), root, accepted
