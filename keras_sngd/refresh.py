"""The warm-started refresh of `U`, with `U U^T = G^-1`, guarded against bad estimates."""

from typing import NamedTuple

from keras import ops

from keras_sngd.linear_algebra import damped
from keras_sngd.linear_algebra import trace
from keras_sngd.newton_schulz import coupled_newton_schulz

# A converged float32 iteration ends with a residual ||Z Y - I|| / sqrt(d) of 1e-7 to 1e-4 (condition
# numbers up to 1e6, d up to 1024); a larger one means the estimate did not converge.
ACCEPTED_RESIDUAL = 1e-3
# The refresh stops its iteration here: one quadratic step past 1e-3, and the further iterations of the
# rounding-error rule would change `U` and the consumers' kernels by less than this relative amount.
_STOP_RESIDUAL = {"float32": 1e-5, "float64": None}
_PROBES = 8

FUNCTION_PRESERVING = "function-preserving"
REPLACING = "replacing"
STATISTICS_ONLY = "statistics-only"
NOT_TRACED = "not traced yet"


class RefreshMode(NamedTuple):
    """How a layer's refresh treats the model's function.

    Attributes:
        kind: `"function-preserving"` (the consumers' weights are re-expressed, the outputs do not move),
            `"replacing"` (`U` is replaced and the function moves, like batch normalization replacing its
            statistics), `"statistics-only"` (`FisherStatistics`: nothing to re-express) or
            `"not traced yet"`.
        reason: a sentence: which consumers are re-expressed, or why they cannot be.
    """

    kind: str
    reason: str

    def __str__(self):
        return f"{self.kind} ({self.reason})" if self.reason else self.kind


class RefreshResult(NamedTuple):
    """One refresh's outcome, float32.

    Attributes:
        inverse_root: `(d, d)`, the new `U` (the old one when not accepted).
        mixing: `(d, d)`, the matrix `M` that re-expresses a consumer kernel, `W' <- M W'` so that
            `U_new W'_new = U_old W'` (the identity when not accepted).
        shift: `(d,)`, the new centering shift `mu` (zeros when the layer does not center).
        accepted: boolean scalar.
        iterations: int32 scalar, the Newton-Schulz iterations run.
        low_rank: `()` for a dense `U`; for a layer with `rank`, the `keras_sngd.low_rank.LowRankRoot`
            factors of the new `U` (the old ones when not accepted).
        leverage: `()` without the batch-leverage scale; with it, the float32 scale `c` that divides the
            new `U` (`keras_sngd.leverage`; the old one when not accepted).
    """

    inverse_root: object
    mixing: object
    shift: object
    accepted: object
    iterations: object
    low_rank: tuple = ()
    leverage: object = ()


def warm_refresh(fisher, inverse_root, damping, iterations=None, dtype="float32"):
    """A new `U` with `U U^T = G_d^-1`, warm-started from the current `U`, or the current one if bad.

    ```
    G_d = G + damping * (trace(G) / d) * I
    A = U_old^T G_d U_old                       # the identity once statistics settle
    A^(1/2), A^(-1/2) = newton_schulz(A)        # few iterations when A is near I
    U_new = U_old A^(-1/2)                      # U_new U_new^T = U_old A^-1 U_old^T = G_d^-1
    mixing = A^(1/2)                            # W'_new = A^(1/2) W'  =>  U_new W'_new = U_old W'
    accepted = residual finite and <= 1e-3, U_new and mixing finite
    ```

    `U_new U_new^T = G_d^-1` is all the paper's Proposition 1 needs; `U_new` is not symmetric. Rounding
    errors in `U_old` do not accumulate over refreshes: each `A` measures how far `U_old` is from whitening
    the current `G_d`, and the iteration corrects all of it. The first refresh (`U_old = I`) is the cold
    start, `U = G_d^(-1/2)`.

    Args:
        fisher: `(d, d)` float32 local Fisher matrix `G`.
        inverse_root: `(d, d)` float32, the current `U`, kept on failure.
        damping: float >= 0, relative damping, as in `newton_schulz`.
        iterations: fixed iteration count, or None for the residual stopping rule. Defaults to `None`.
        dtype: the dtype of the iteration, `"float32"` or `"float64"`. Defaults to `"float32"`.

    Returns:
        `RefreshResult` with `shift` zeros (the caller sets it when centering).
    """
    dim = fisher.shape[-1]
    identity = ops.eye(dim, dtype="float32")
    old = ops.cast(inverse_root, dtype)
    fisher = ops.cast(damped(fisher, damping, identity), dtype)
    whitened = ops.matmul(ops.transpose(old), ops.matmul(fisher, old))
    whitened = 0.5 * (whitened + ops.transpose(whitened))
    tolerance = None if iterations is not None else _STOP_RESIDUAL[dtype]
    result = coupled_newton_schulz(whitened, iterations=iterations, tolerance=tolerance, scaling="power",
                                   dtype=dtype)
    new_inverse_root = ops.cast(ops.matmul(old, result.inverse_root), "float32")
    mixing = ops.cast(result.root, "float32")
    # Checking the outputs' sums is enough: any NaN or Inf in a matrix reaches its sum.
    accepted = (
        ops.isfinite(result.residual)
        & (result.residual <= ACCEPTED_RESIDUAL)
        & ops.isfinite(ops.sum(new_inverse_root))
        & ops.isfinite(ops.sum(mixing))
    )
    return RefreshResult(
        inverse_root=ops.where(accepted, new_inverse_root, inverse_root),
        mixing=ops.where(accepted, mixing, identity),
        shift=ops.zeros((dim,), "float32"),
        accepted=accepted,
        iterations=result.iterations,
    )


def whitening_drift(fisher, inverse_root, damping):
    """A cheap estimate of how far `U` is from whitening `G_d`: `||U^T G_d U - I||_F / sqrt(d)`.

    ```
    E v_j = U^T (G_d (U v_j)) - v_j,   drift = sqrt(mean_j ||E v_j||^2 / d)
    ```

    with 8 fixed Gaussian probe vectors `v_j` (`E[||E v||^2] = ||E||_F^2`), so it costs three `(d, d)` by
    `(d, 8)` products instead of a refresh's dozens of `(d, d)` products. It is the root mean square
    deviation of the whitened second moment from the identity: 0 right after a refresh on the same
    statistics, about `sqrt(d / n)` for `n` effective rows of fresh statistics.

    Args:
        fisher: `(d, d)` float32 `G`.
        inverse_root: `(d, d)` float32 `U`.
        damping: float >= 0, relative damping, as in `warm_refresh`.

    Returns:
        float32 scalar.
    """
    dim = fisher.shape[-1]
    probes = ops.convert_to_tensor(_probe_vectors(dim), "float32")
    damping_term = damping * trace(fisher) / dim
    mapped = ops.matmul(inverse_root, probes)
    mapped = ops.matmul(fisher, mapped) + damping_term * mapped
    deviation = ops.matmul(ops.transpose(inverse_root), mapped) - probes
    return ops.sqrt(ops.mean(ops.sum(ops.square(deviation), axis=0)) / dim)


def _probe_vectors(dim):
    import numpy as np

    return np.random.default_rng(dim).standard_normal((dim, _PROBES)).astype("float32")
