"""The batch-leverage scale: how far SNGD's step may go when a batch has fewer rows than features.

With `U U^T = G_d^-1` the consumer reads white inputs `y = x U`, and plain SGD on its kernel `W'` moves
the pre-activations of the batch's rows by

```
d z_i = -(lr / B) sum_j (y_i . y_j) g_j           (B rows, g_j the gradient at row j's pre-activations)
```

The `B x B` Gram matrix `K = Y Y^T / B` sets how large that step is. For rows whose population second
moment is white, its eigenvalues follow the Marchenko-Pastur law; the largest is

```
lambda_max(K) ~ (1 + sqrt(r))^2,   r = d_eff / B,   d_eff = trace(G G_d^-1) = sum_k lambda_k / (lambda_k + damping * mean)
```

while the population's own directions have eigenvalue 1. While `d_eff` is at most the batch's rows, the
step is what natural gradient descent intends. Beyond that, each row's own term `(lr / B) ||y_i||^2 g_i ~
lr (d_eff / B) g_i` dominates: a step fits each row's residual in directions that no other row shares, and
at the learning rates plain SGD takes (0.1 to 0.3), it overshoots. Whitening raises a layer's effective
number of features from the few directions of large variance that plain SGD's step is limited by to
`d_eff`. So wide Dense inputs at small batches diverge, or fall behind plain SGD at the same learning
rate, where the paper's MLP (80 features, batch 50 to 64: `r` about 1) does not.

The scale `c` multiplies that layer's local Fisher matrix, `G <- c G` (as the paper's `E(v_f)` does), and
so divides its effective learning rate by `c`, so that the worst direction's step is the one the paper MLP
takes:

```
c = max(1, ((1 + sqrt(r)) / (1 + sqrt(r_ref)))^2),   r_ref = REFERENCE_RATIO = 1
U <- U_d / sqrt(c),   W' <- sqrt(c) W'                 (U_d U_d^T = G_d^-1; U W' unchanged)
```

It is 1 (no change) for a batch with at least as many rows as effective features; before a convolution
or a recurrent layer every pixel or time step is a row, so there it stays 1. For dense `U`,
`||U_d||_F^2 = trace(G_d^-1)`, so `d_eff = d - damping * mean * ||U_d||_F^2` costs `O(d^2)`; for a low-rank
`U` the same formula gives the estimate for its flattened spectrum.

Measured with `python benchmarks/wide_mlp.py` (`benchmarks/results/wide_mlp.txt`; 784-W-W-W-10 ReLU
MLPs through `reconstruct`, 10,000 real Fashion-MNIST images, 2 epochs): docs/leverage.md and the
`LocalFisher` docstring ("Batch leverage").
"""

from keras import ops

from keras_sngd.linear_algebra import trace

# Rows per effective feature at which the step is left as it is (the paper MLP's hidden layers at batch
# 64 have r = 0.8 to 1.05).
REFERENCE_RATIO = 1.0


def effective_features(fisher, inverse_root, damping):
    """`d_eff = trace(G G_d^-1) = d - damping * (trace(G) / d) * ||U||_F^2` for `U U^T = G_d^-1`, clipped
    to `[0, d]` (float32 scalar).

    Args:
        fisher: `(d, d)` `G`, undamped.
        inverse_root: `(d, d)` `U_d`, with `U_d U_d^T = G_d^-1`.
        damping: float >= 0, relative damping.
    """
    dim = fisher.shape[-1]
    fisher = ops.cast(fisher, "float32")
    root = ops.cast(inverse_root, "float32")
    value = dim - damping * (trace(fisher) / dim) * ops.sum(ops.square(root))
    return ops.clip(value, 0.0, float(dim))


def leverage_scale(effective, rows):
    """`c = max(1, ((1 + sqrt(d_eff / rows)) / (1 + sqrt(REFERENCE_RATIO)))^2)` (float32 scalar).

    Args:
        effective: float32 scalar, `d_eff` (`effective_features`).
        rows: float32 scalar, the rows of the training batch (examples times positions); 0 (no batch seen
            yet, e.g. a loaded model refreshed by hand before training) gives 1.
    """
    rows = ops.cast(rows, "float32")
    ratio = ops.cast(effective, "float32") / ops.maximum(rows, 1.0)
    scale = ops.square((1.0 + ops.sqrt(ratio)) / (1.0 + REFERENCE_RATIO**0.5))
    return ops.where(rows > 0, ops.maximum(scale, 1.0), 1.0)


def scale_refresh(fisher, inverse_root, mixing, low_rank, accepted, rows, old_scale, damping):
    """A refresh's `U`, mixing and low-rank factors with the batch-leverage scale applied.

    ```
    c = leverage_scale(effective_features(G, U_d, damping), rows)   (the old c when not accepted)
    U <- U_d / sqrt(c),   mixing <- sqrt(c) * mixing,   low-rank s, c_I <- s / sqrt(c), c_I / sqrt(c)
    ```

    so that `U_new mixing = U_old` still holds (the consumers' re-expression keeps the function). A
    rejected refresh (`accepted` false) already carries the old `U` and the identity mixing: they and the
    old scale are returned unchanged.

    Args:
        fisher: `(d, d)` `G`, undamped. inverse_root: `(d, d)` `U_d` of the refresh. mixing: `(d, d)`.
        low_rank: `()` or a `keras_sngd.low_rank.LowRankRoot`. accepted: boolean scalar. rows: float32
        scalar, the training batch's rows. old_scale: float32 scalar, the current `c`. damping: float.

    Returns:
        `(inverse_root, mixing, low_rank, scale)`.
    """
    scale = leverage_scale(effective_features(fisher, inverse_root, damping), rows)
    scale = ops.where(accepted, scale, old_scale)
    factor = ops.where(accepted, 1.0 / ops.sqrt(scale), 1.0)
    if low_rank:
        low_rank = low_rank._replace(scales=low_rank.scales * factor, identity_scale=low_rank.identity_scale * factor)
    return inverse_root * factor, mixing / factor, low_rank, scale
