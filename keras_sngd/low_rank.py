"""A low-rank-plus-identity `U` for wide inputs: `y = x U` in `O(d r)` per row instead of `O(d^2)`.

Before a wide layer, the whitening `y = x U` with a dense `(d, d)` `U` is the largest cost SNGD adds to a
step (on the paper's MLP, `x U` for the 784 pixels alone costs 0.4x a plain SGD step), and a dense refresh
costs dozens of `(d, d)` products. When `G_d` has a few large eigenvalues above a flat floor, which is what
damping makes of the spectrum of natural data (`G_d = G + damping * mean(eig G) * I`: every eigenvalue of
`G` below the mean is lifted to between `damping` and `1 + damping` times the mean), its inverse root is
close to one with `r` free directions and one shared scale for the rest:

```
G_d ~ V diag(theta) V^T + tau (I - V V^T)      # theta: the r largest eigenvalues, V (d, r) orthonormal
                                               # tau = (trace(G_d) - sum(theta)) / (d - r), the rest's mean
U   = c I + V diag(s) V^T,   c = tau^(-1/2),   s = theta^(-1/2) - c
U^-1 = c^-1 I + V diag(theta^(1/2) - c^-1) V^T  # exact, V being orthonormal
y   = c x + ((x V) * s) V^T                   # two (rows, d) x (d, r) products
```

`U U^T` is the inverse of that approximation: exactly `G_d^-1` on the top `r` directions, and off by the
ratio of each other eigenvalue to their mean `tau` elsewhere. With `r` at least the number of eigenvalues
of `G` above their mean `mu`, every other eigenvalue of `G_d` lies between `damping * mu` and
`(1 + damping) * mu`, so those ratios are within a factor `(1 + damping) / damping` (2 for damping 1): a
bounded preconditioner error, which the layer's drift check measures (`||U^T G_d U - I||_F / sqrt(d)`; on
Fashion-MNIST's pixels with damping 1 and `r = 64` it is 0.06, below the refresh tolerance 0.3). With
small damping the floor is not flat, and a low rank is a poor approximation (drift 1.05 for damping 0.01
and `r = 64` on the same pixels): use it where the damping is large.

The refresh finds `V` and `theta` by subspace iteration warm-started from the previous `V` (a fixed
Gaussian matrix before the first refresh), then a Rayleigh-Ritz step:

```
Q <- orth(G_d Q)   (iterations times, QR)      # O(d^2 r) each: no (d, d) x (d, d) product
B = Q^T G_d Q,  theta, W = eigh(B),  V = Q W
```

The function-preserving mixing of the consumer's kernel, `W'_new = M W'` with `U_new M = U_old`, is
`M = U_new^-1 U_old`, exact for the closed-form inverse above, so the model's function is kept as with the
dense refresh.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_sngd.linear_algebra import damped
from keras_sngd.linear_algebra import trace

# `rank="auto"`: a low rank for rank-2 inputs (one row per example, before a Dense layer) of at least this
# many features whose damping is at least `AUTO_MIN_DAMPING`: `max(AUTO_MIN_RANK, d // AUTO_FRACTION)`,
# twice that below damping 1 (`resolve_rank`).
AUTO = "auto"
AUTO_MIN_FEATURES = 256
AUTO_MIN_DAMPING = 0.1
AUTO_MIN_RANK = 64
AUTO_FRACTION = 16
# Subspace iterations per refresh. Each multiplies the angle between the basis and the top `r` directions by
# about `theta_(r+1) / theta_r`, at `O(d^2 r)` and a QR of `(d, r)`. The first refresh starts from a random
# basis: eight take a gap of 10 to float32 rounding. The later ones start from the previous basis, which
# the statistics have moved little since (the drift check refreshes once they moved by 0.3): one, so that
# the iteration goes on across refreshes. A basis still short of the top directions shows in the next
# drift check. On `small_cnn`'s 800-wide head one and two gave the same losses (0.2998 and 0.2982 after 3
# epochs, 2 seeds; dense: 0.2989), and a QR of `(800, 128)` costs more than the `(800, 800) x (800, 128)`
# product.
SUBSPACE_ITERATIONS = 8
WARM_SUBSPACE_ITERATIONS = 1


class LowRankRoot(NamedTuple):
    """The factors of `U = c I + V diag(s) V^T`, float32.

    Attributes:
        basis: `(d, r)`, `V`, orthonormal columns.
        scales: `(r,)`, `s`.
        identity_scale: scalar, `c`.
    """

    basis: object
    scales: object
    identity_scale: object


def resolve_rank(rank, input_shape, axis, damping):
    """The rank a layer keeps `U` at for `rank` (an int, None or `"auto"`), or None for a dense `U`.

    `"auto"`: for a rank-2 input (one row per example: before a Dense layer, where `x U` costs `d^2` per
    example against the consumer's `d * units`) with `d >= 256` features and `damping >= 0.1`,
    `r = max(64, d // 16)` with damping >= 1 and twice that below; dense otherwise. The damping bounds the
    approximation error (module docstring: a factor `(1 + damping) / damping` on the directions outside the
    top `r`), and the less damping, the more directions stand above the floor. Measured (SGD lr 0.1, final
    training loss; `python benchmarks/low_rank.py`): before the paper's MLP's pixels (damping 1, r = 64)
    the same 5-epoch loss as a dense `U`; before `small_cnn`'s 800-wide head (damping 0.1) r = 128 gave
    the dense loss and r = 64 a 3% higher one; with damping 0.01 (an MLP's 512-wide hidden layers)
    r = 64 gave 0.248 against 0.205, so small damping keeps a dense `U`. A rank of at least `d` is dense.
    """
    dim = input_shape[axis]
    if rank == AUTO:
        if len(input_shape) != 2 or dim < AUTO_MIN_FEATURES or damping < AUTO_MIN_DAMPING:
            return None
        rank = max(AUTO_MIN_RANK, dim // AUTO_FRACTION) * (1 if damping >= 1.0 else 2)
    if rank is None or rank >= dim:
        return None
    return rank


def initial_basis(dim, rank):
    """The fixed Gaussian `(dim, rank)` start of the first subspace iteration (deterministic, float32)."""
    return np.random.default_rng(dim * 1000 + rank).standard_normal((dim, rank)).astype("float32")


def apply_root(features, root):
    """`features U` for `U = c I + V diag(s) V^T` (`root` a `LowRankRoot`), features on the last axis."""
    dtype = features.dtype
    basis = ops.cast(root.basis, dtype)
    projected = ops.matmul(features, basis) * ops.cast(root.scales, dtype)
    return ops.cast(root.identity_scale, dtype) * features + ops.matmul(projected, ops.transpose(basis))


def low_rank_mixing(new_root, old_root, matrix):
    """`M matrix` with `M = U_new^-1 U_old`, the function-preserving mixing of a refresh, from the factors.

    ```
    U_old K    = c_o K + V_o diag(s_o) V_o^T K
    U_new^-1 Y = Y / c_n + V_n diag(1 / (c_n + s_n) - 1 / c_n) V_n^T Y     # V_n orthonormal
    ```

    `O(d r k)` for a `(d, k)` `matrix`, against `O(d^2 k)` with the dense `(d, d)` mixing that
    `low_rank_refresh` also returns (the same matrix: both use `V_n`'s orthonormality). Before the first
    refresh `U_old = I` (`s_o = 0`, `c_o = 1`), whatever its basis. On JAX a refresh hands the factors to
    the optimizer instead of the dense mixing (`keras_sngd.handoff`).

    Args:
        new_root, old_root: `LowRankRoot`s of `U_new` and `U_old`.
        matrix: `(d, k)`, e.g. a consumer's kernel with its input axis first.

    Returns:
        `(d, k)`, in `matrix`'s dtype.
    """
    return root_times(new_root, root_times(old_root, matrix), inverse=True)


def root_times(root, matrix, inverse=False):
    """`U matrix` (or `U^-1 matrix`) for `U = c I + V diag(s) V^T`, `matrix` `(d, k)`, in its dtype.

    `U^-1 = c^-1 I + V diag(1 / (c + s) - 1 / c) V^T` needs `V` orthonormal (true after a refresh; before
    the first one `s = 0` and `U = I` whatever `V`)."""
    dtype = matrix.dtype
    basis = ops.cast(root.basis, dtype)
    identity_scale = ops.cast(root.identity_scale, dtype)
    scales = ops.cast(root.scales, dtype)
    if inverse:
        scales = 1.0 / (identity_scale + scales) - 1.0 / identity_scale
        identity_scale = 1.0 / identity_scale
    projected = ops.matmul(ops.transpose(basis), matrix) * scales[:, None]
    return identity_scale * matrix + ops.matmul(basis, projected)


def dense_root(root, dim):
    """`U = c I + V diag(s) V^T` as a `(dim, dim)` float32 matrix."""
    return root.identity_scale * ops.eye(dim, dtype="float32") + ops.matmul(
        root.basis * root.scales[None, :], ops.transpose(root.basis)
    )


def low_rank_refresh(fisher, old_inverse_root, basis, damping, iterations=SUBSPACE_ITERATIONS, dtype="float32"):
    """A new low-rank-plus-identity `U` for `G_d`, and the mixing that keeps the consumers' function.

    ```
    G_d = G + damping * (trace(G) / d) * I
    Q = basis; Q <- orth(G_d Q) `iterations` times; B = Q^T G_d Q; theta, W = eigh(B); V = Q W
    tau = (trace(G_d) - sum(theta)) / (d - r);  c = tau^(-1/2);  s = theta^(-1/2) - c
    U_new = c I + V diag(s) V^T,   mixing = U_new^-1 U_old
    accepted = theta > 0, tau > 0, everything finite
    ```

    Args:
        fisher: `(d, d)` float32 `G`.
        old_inverse_root: `(d, d)` float32, the current dense `U` (kept on failure).
        basis: `(d, r)` float32, the start of the subspace iteration (the previous `V`).
        damping: float >= 0, relative to the mean eigenvalue, as in `warm_refresh`.
        iterations: int >= 1 or an int32 scalar tensor, subspace iterations. Defaults to
            `SUBSPACE_ITERATIONS`.
        dtype: `"float32"` or `"float64"`, the dtype of the computation. Defaults to `"float32"`.

    Returns:
        `(accepted, inverse_root, mixing, root)`: boolean scalar; `(d, d)` float32 `U_new` (the old one
        when not accepted); `(d, d)` float32 mixing (the identity when not accepted); the `LowRankRoot`
        of `U_new` (of no use when not accepted: the caller keeps its old factors).
    """
    dim, rank = basis.shape
    identity = ops.eye(dim, dtype=dtype)
    fisher = ops.cast(fisher, dtype)
    damped_fisher = damped(fisher, damping, identity)
    # Statistics that are not finite, or zero (none yet), are refused; the iteration then runs on the
    # identity so that no decomposition sees them (TensorFlow's `eigh` raises on NaN).
    usable = ops.isfinite(ops.sum(damped_fisher)) & (trace(damped_fisher) > 0)
    damped_fisher = ops.where(usable, damped_fisher, identity)
    # Scaled by the mean eigenvalue so that the powers of the iteration stay near 1.
    mean_eigenvalue = ops.maximum(trace(damped_fisher) / dim, 1e-30)
    unit = damped_fisher / mean_eigenvalue
    def iterate(index, subspace):
        return ops.qr(ops.matmul(unit, subspace), mode="reduced")[0]

    subspace = ops.cast(basis, dtype)
    if isinstance(iterations, int):
        for index in range(iterations):
            subspace = iterate(index, subspace)
    else:
        # A traced count (first refresh or not): one loop, traced once.
        subspace = ops.fori_loop(0, iterations, iterate, subspace)
    projected = ops.matmul(ops.transpose(subspace), ops.matmul(unit, subspace))
    projected = 0.5 * (projected + ops.transpose(projected))
    theta, rotation = ops.eigh(projected)
    new_basis = ops.matmul(subspace, rotation)
    tail = (trace(unit) - ops.sum(theta)) / (dim - rank)
    accepted = usable & (ops.min(theta) > 0) & (tail > 0)
    safe_theta = ops.where(theta > 0, theta, 1.0)
    safe_tail = ops.where(tail > 0, tail, 1.0)
    # In units of the mean eigenvalue: U = (c I + V diag(s) V^T) / sqrt(mean_eigenvalue).
    norm = ops.sqrt(mean_eigenvalue)
    identity_scale = 1.0 / ops.sqrt(safe_tail)
    scales = 1.0 / ops.sqrt(safe_theta) - identity_scale
    inverse_scales = ops.sqrt(safe_theta) - ops.sqrt(safe_tail)
    root = LowRankRoot(
        basis=ops.cast(new_basis, "float32"),
        scales=ops.cast(scales / norm, "float32"),
        identity_scale=ops.cast(identity_scale / norm, "float32"),
    )
    new_inverse_root = dense_root(root, dim)
    # U_new^-1 U_old = (c^-1 I + V diag(theta^(1/2) - c^-1) V^T) U_old, in the unscaled units.
    old = ops.cast(old_inverse_root, dtype)
    inverse_old = ops.sqrt(safe_tail) * old + ops.matmul(
        new_basis * inverse_scales[None, :], ops.matmul(ops.transpose(new_basis), old)
    )
    mixing = ops.cast(inverse_old * norm, "float32")
    accepted = accepted & ops.isfinite(ops.sum(new_inverse_root)) & ops.isfinite(ops.sum(mixing))
    return (
        accepted,
        ops.where(accepted, new_inverse_root, old_inverse_root),
        ops.where(accepted, mixing, ops.eye(dim, dtype="float32")),
        root,
    )
