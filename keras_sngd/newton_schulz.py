"""The coupled Newton-Schulz iteration for `G^(1/2)` and `G^(-1/2)` (paper Eq. 15)."""

from typing import NamedTuple

import numpy as np

from keras import backend
from keras import ops

from keras_sngd.linear_algebra import damped
from keras_sngd.linear_algebra import trace
from keras_sngd.validation import check_bool
from keras_sngd.validation import check_choice
from keras_sngd.validation import check_float
from keras_sngd.validation import check_int

SCALINGS = ("frobenius", "trace", "near_identity", "power")
_POWER_STEPS = 8
# The power estimate is a lower bound of the largest eigenvalue; the margin keeps the scaled spectrum
# below 1 when it is close, and the iteration converges for any scaled eigenvalue in (0, 3).
_POWER_MARGIN = 1.1
_COMPUTE_DTYPES = ("float32", "float64")
# Below this residual every eigenvalue p of Z Y has |1 - p| < 1e-3 * sqrt(d) <= 0.032 (d <= 1024), the
# iteration is in its quadratic regime, and a residual that stops halving means rounding has taken over.
_QUADRATIC_REGIME = 1e-3
_MACHINE_EPSILON = {"float32": 2.0**-23, "float64": 2.0**-52}
_SMALLEST_NORMAL = {"float32": 2.0**-126, "float64": 2.0**-1022}


class NewtonSchulzResult(NamedTuple):
    """What `coupled_newton_schulz` returns.

    Attributes:
        root: `G_d^(1/2)`, shape `(..., d, d)`.
        inverse_root: `G_d^(-1/2)`, shape `(..., d, d)`.
        residual: `||Z Y - I||_F / sqrt(d)` per matrix, shape `(...)`; non-finite or above about 1e-3
            means the iteration did not converge.
        iterations: int32 scalar, the iterations run (the most over a batch).
    """

    root: object
    inverse_root: object
    residual: object
    iterations: object


def newton_schulz(
    matrix,
    damping=0.0,
    iterations=None,
    tolerance=None,
    scaling="frobenius",
    dtype=None,
    return_residual=False,
):
    """Square root and inverse square root of symmetric positive (semi-)definite matrices.

    Runs the coupled Newton-Schulz iteration of the paper's Eq. 15 on one matrix `(d, d)` or a batch
    `(..., d, d)`. It uses matrix products only, so it is fast on accelerators and is written in
    `keras.ops`, so it runs on every Keras 3 backend and inside a compiled train step.

    With `G` the input, `damping` `lambda` and pre-scale `s`:

    ```
    G_d = G + lambda * (trace(G) / d) * I        # damping relative to the mean eigenvalue
    A   = G_d / s                                # s >= largest eigenvalue of G_d: eig(A) in (0, 1]
    Y_0 = A,  Z_0 = I
    T_k = (3 I - Z_k Y_k) / 2
    Y_{k+1} = Y_k T_k   ->  A^(1/2)
    Z_{k+1} = T_k Z_k   ->  A^(-1/2)
    G_d^(1/2) = sqrt(s) Y,   G_d^(-1/2) = Z / sqrt(s)    # post-compensation
    ```

    Every eigenvalue `p` of `Z_k Y_k` follows `p <- p (3 - p)^2 / 4`: it grows by 9/4 per iteration while
    small and converges quadratically once near 1. The smallest eigenvalue of `A` is at least
    `lambda / (d (1 + lambda))`, so damping bounds the number of iterations; that bound is
    `max_iterations(d, damping, dtype)`.

    **Stopping rule.** With `iterations=None` the loop stops, per batch, once the residual
    `||Z Y - I||_F / sqrt(d)` (computed once per iteration from `Z Y`, which `T` needs anyway) is at most
    `tolerance`, or, when `tolerance` is None, once it is in the quadratic regime (below 1e-3) and no
    longer at least halves per iteration, which means rounding error has taken over. It never runs past
    `max_iterations`.

    **Precision.** Any float32 algorithm has a forward error of about `eps32 * kappa / 2` on the inverse
    root (`kappa` = the damped condition number). Pass `dtype="float64"` where more accuracy is needed
    (on JAX it needs `jax_enable_x64`).

    **Failure.** A non-finite matrix gives non-finite outputs and a non-finite residual (the other
    matrices of a batch are unaffected): callers check `residual` (with `return_residual=True`) and keep
    their previous matrix, as `LocalFisher` does. Finite positive semi-definite input with `damping > 0`,
    or finite positive definite input, never gives NaN.

    Args:
        matrix: symmetric positive semi-definite tensor of shape `(..., d, d)`.
        damping: float >= 0, the Tikhonov term relative to the mean eigenvalue `trace(G) / d`.
            Defaults to `0.0`.
        iterations: int >= 1 for a fixed number of iterations (compiles to a fixed-length loop), or
            None for the residual stopping rule. Defaults to `None`.
        tolerance: float > 0 or None; the residual at which to stop when `iterations` is None.
            Defaults to `None` (stop when rounding error dominates).
        scaling: the pre-scale `s`: `"frobenius"` (`||G_d||_F`), `"trace"` (`trace(G_d)`), or
            `"near_identity"` (the smaller of `||G_d||_F` and `1 + ||G_d - I||_F`, both upper bounds of the
            largest eigenvalue; the second is close to 1 for a matrix close to the identity, which then
            converges in a few iterations), or `"power"` (the smaller of `||G_d||_F` and 1.1 times a power
            iteration's estimate of the largest eigenvalue from 8 products with a `(d, 2)` block: the tightest, for
            matrices whose spectrum is known to be well inside the iteration's convergence region).
            Defaults to `"frobenius"`.
        dtype: `"float32"`, `"float64"` or None, the dtype of the computation and the outputs. None means
            float64 for float64 input, float32 otherwise. Defaults to `None`.
        return_residual: bool; also return the final residual `||Z Y - I||_F / sqrt(d)` per matrix
            (shape `(...)`). Defaults to `False`.

    Returns:
        `(root, inverse_root)`, each of the input's shape, or `(root, inverse_root, residual)`.
        `coupled_newton_schulz` returns all of it, and the iteration count, as a `NewtonSchulzResult`.

    Example:

    >>> import numpy as np
    >>> g = np.array([[4.0, 0.0], [0.0, 9.0]], dtype="float32")
    >>> root, inverse_root = newton_schulz(g)
    >>> np.asarray(root, "float64").round(4).tolist(), np.asarray(inverse_root, "float64").round(4).tolist()
    ([[2.0, 0.0], [0.0, 3.0]], [[0.5, 0.0], [0.0, 0.3333]])

    Reference:
        Liu et al., "Reconstructing Deep Neural Networks: Unleashing the Optimization Potential of Natural
        Gradient Descent" (Eq. 15); Higham, "Functions of Matrices", Sec. 6.7 (coupled Newton-Schulz).
    """
    return_residual = check_bool("return_residual", return_residual)
    result = coupled_newton_schulz(matrix, damping, iterations, tolerance, scaling, dtype)
    if return_residual:
        return result.root, result.inverse_root, result.residual
    return result.root, result.inverse_root


def coupled_newton_schulz(matrix, damping=0.0, iterations=None, tolerance=None, scaling="frobenius", dtype=None):
    """`newton_schulz` with every result named: a `NewtonSchulzResult`. Arguments as for `newton_schulz`."""
    damping = check_float("damping", damping, minimum=0.0)
    iterations = check_int("iterations", iterations, minimum=1, allow_none=True)
    tolerance = check_float("tolerance", tolerance, minimum=0.0, exclusive_minimum=True, allow_none=True)
    scaling = check_choice("scaling", scaling, SCALINGS)
    dtype = check_choice("dtype", dtype, _COMPUTE_DTYPES, allow_none=True)
    matrix = _as_square_matrices(matrix, dtype)
    dtype = backend.standardize_dtype(matrix.dtype)
    dim = matrix.shape[-1]
    identity = ops.eye(dim, dtype=dtype)

    matrix = damped(matrix, damping, identity)
    scaled, scale = _prescale(matrix, scaling, identity)
    if iterations is not None:
        root, inverse_root, product = _iterate_fixed(scaled, identity, iterations)
        count = ops.convert_to_tensor(iterations, "int32")
        residual = _residual(product, identity)
    else:
        limit = max_iterations(dim, damping, dtype)
        count, root, inverse_root, residual = _iterate_until_converged(scaled, identity, limit, tolerance)
    sqrt_scale = ops.sqrt(scale)[..., None, None]
    return NewtonSchulzResult(root * sqrt_scale, inverse_root / sqrt_scale, residual, count)


def _as_square_matrices(matrix, dtype):
    """`matrix` as a tensor of shape `(..., d, d)` in the compute dtype."""
    matrix = ops.convert_to_tensor(matrix)
    shape = tuple(matrix.shape)
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] is None:
        raise ValueError(f"`matrix` must have shape (..., d, d) with a known d. Received: matrix.shape={shape}")
    if dtype is None:
        dtype = "float64" if backend.standardize_dtype(matrix.dtype) == "float64" else "float32"
    matrix = ops.cast(matrix, dtype)
    if backend.standardize_dtype(matrix.dtype) != dtype:
        raise ValueError(
            f"The {backend.backend()} backend cannot compute in dtype={dtype!r} as configured "
            f"(it gave {backend.standardize_dtype(matrix.dtype)}); on JAX, enable jax_enable_x64."
        )
    return matrix


def _prescale(matrix, scaling, identity):
    """`(matrix / s, s)` with `s` at least the largest eigenvalue, so that the scaled spectrum is in (0, 1]."""
    # An all-zero matrix has no inverse root; a tiny floor keeps the iteration finite, and its residual
    # then reports the failure.
    floor = _SMALLEST_NORMAL[backend.standardize_dtype(matrix.dtype)]
    largest_entry = ops.maximum(ops.max(ops.abs(matrix), axis=(-2, -1)), floor)
    if scaling == "trace":
        scale = trace(matrix)
    else:
        scale = _frobenius_norm(matrix, largest_entry)
        if scaling == "power":
            scale = ops.minimum(scale, _POWER_MARGIN * _power_estimate(matrix, scale))
        if scaling == "near_identity":
            deviation = matrix - identity
            scale = ops.minimum(scale, 1.0 + _frobenius_norm(deviation, ops.max(ops.abs(deviation), axis=(-2, -1))))
    scale = ops.maximum(scale, largest_entry)
    return matrix / scale[..., None, None], scale


def _power_estimate(matrix, frobenius_norm):
    """The larger Rayleigh quotient of two power iterations from fixed starts: at most the largest eigenvalue.

    The iterations run on `B = A / ||A||_F`, whose eigenvalues are in [0, 1], so `B^k s` needs no
    normalization between steps: it cannot grow, and for `d <= 4096` and `k = 8` it shrinks at most by
    `(lambda_max / ||A||_F)^k >= d^(-k/2)` along the top eigenvector, far from float32's smallest normal.
    Each quotient is taken of its vector scaled to a largest entry of 1 (one matrix product per step and a
    handful of operations in all, which keeps the traced refresh small).

    The two starts are the all-ones vector and the alternating `(1, -1, 1, ...)`, iterated together as one
    `(d, 2)` block: a top eigenvector orthogonal to one start is rarely orthogonal to both, each quotient
    is a lower bound, so their maximum is too. A block of two columns rather than one vector also because
    XLA's CPU compiler builds a matrix-vector product far more slowly than a matrix product, and on JAX
    the refresh is compiled into every train step (`python benchmarks/jax_refresh_compile.py`: this
    estimate's pre-scaling compiled in about 0.23 s instead of 0.33 s).
    """
    dtype = backend.standardize_dtype(matrix.dtype)
    dim = matrix.shape[-1]
    unit = matrix / frobenius_norm[..., None, None]
    starts = np.ones((dim, 2))
    starts[1::2, 1] = -1.0
    starts = ops.convert_to_tensor(starts, dtype)
    vectors = ops.matmul(unit, starts)  # B S, (..., d, 2)
    for _ in range(_POWER_STEPS - 1):
        vectors = ops.matmul(unit, vectors)
    vectors = vectors / ops.maximum(ops.max(ops.abs(vectors), axis=-2, keepdims=True), _SMALLEST_NORMAL[dtype])
    # A zero vector (a zero matrix) has v^T v = 0 and gives 0; any other has v^T v >= 1 (its largest entry is 1).
    quotients = ops.sum(vectors * ops.matmul(unit, vectors), axis=-2) / ops.maximum(
        ops.sum(ops.square(vectors), axis=-2), 1.0
    )
    return frobenius_norm * ops.max(quotients, axis=-1)


def _frobenius_norm(matrix, largest_entry):
    # Divided by the largest entry first, so that the squares cannot overflow.
    safe = ops.maximum(largest_entry, _SMALLEST_NORMAL[backend.standardize_dtype(matrix.dtype)])
    unit = matrix / safe[..., None, None]
    return safe * ops.sqrt(ops.sum(ops.square(unit), axis=(-2, -1)))


def _residual(product, identity):
    """`||Z Y - I||_F / sqrt(d)` per matrix."""
    return ops.sqrt(ops.sum(ops.square(product - identity), axis=(-2, -1)) / identity.shape[-1])


def _step(root, inverse_root, product, identity):
    """One coupled iteration; returns `(Y, Z, Z Y)` with the product needed by the next one."""
    transform = 0.5 * (3.0 * identity - product)
    root = ops.matmul(root, transform)
    inverse_root = ops.matmul(transform, inverse_root)
    return root, inverse_root, ops.matmul(inverse_root, root)


def _first_step(scaled, identity):
    """The first iteration from `Y_0 = A, Z_0 = I`: `T_0 = (3 I - A) / 2`, `Y_1 = A T_0`, `Z_1 = T_0` (no
    product with the identity: two matrix products instead of three, with the same result)."""
    transform = 0.5 * (3.0 * identity - scaled)
    root = ops.matmul(scaled, transform)
    return root, transform, ops.matmul(transform, root)


def _iterate_fixed(scaled, identity, iterations):
    root, inverse_root, product = _first_step(scaled, identity)
    for _ in range(iterations - 1):
        root, inverse_root, product = _step(root, inverse_root, product, identity)
    return root, inverse_root, product


def _iterate_until_converged(scaled, identity, limit, tolerance):
    """The loop of the stopping rule; returns `(count, Y, Z, residual)`."""
    stop_at = -1.0 if tolerance is None else float(tolerance)

    def keep_going(count, root, inverse_root, product, residual, previous_residual):
        converged = residual <= stop_at
        stalled = (previous_residual < _QUADRATIC_REGIME) & (residual > 0.5 * previous_residual)
        # A non-finite matrix is done at once: its outputs and residual stay non-finite.
        done = converged | stalled | ~ops.isfinite(residual)
        return (count < limit) & ~ops.all(done)

    def body(count, root, inverse_root, product, residual, previous_residual):
        root, inverse_root, product = _step(root, inverse_root, product, identity)
        return count + 1, root, inverse_root, product, _residual(product, identity), residual

    # The first iteration runs before the loop (`_first_step`: Z_0 = I saves a product); the loop starts
    # from its result. `previous_residual` starts above every threshold so that the first check cannot
    # stall. An input already converged (a scaled identity) comes out of one iteration unchanged.
    root, inverse_root, product = _first_step(scaled, identity)
    residual = _residual(product, identity)
    count, root, inverse_root, _, residual, _ = ops.while_loop(
        keep_going,
        body,
        (ops.convert_to_tensor(1, "int32"), root, inverse_root, product, residual, residual + 2.0),
    )
    return count, root, inverse_root, residual


def max_iterations(dim, damping=0.0, dtype="float32"):
    """The most iterations `newton_schulz` needs for a `dim x dim` matrix with `damping`.

    After Frobenius or trace pre-scaling the smallest eigenvalue of the damped matrix is at least
    `p_0 = damping / (dim * (1 + damping))`. Without damping, `p_0` is taken as `eps / dim`, since smaller
    eigenvalues are below the matrix's rounding error anyway. The count is the number of steps of
    `p <- p (3 - p)^2 / 4` that take `p_0` to within `eps` of 1, plus two for rounding.
    """
    eps = _MACHINE_EPSILON[dtype]
    smallest = damping / (dim * (1.0 + damping)) if damping > 0 else eps / dim
    smallest = max(smallest, eps / dim)
    count, eigenvalue = 0, smallest
    while 1.0 - eigenvalue > eps and count < 200:
        eigenvalue = eigenvalue * (3.0 - eigenvalue) ** 2 / 4.0
        count += 1
    return count + 2
