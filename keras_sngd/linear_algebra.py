"""Small matrix helpers in `keras.ops`, shared by Newton-Schulz, the refreshes and the statistics, and kept
cheap to trace.

Every LocalFisher adds its statistics and refresh to the compiled train step, so the graph ops they
trace are paid once per layer at compile time (tracing, then TensorFlow's graph optimization or XLA's
compilation). `keras.ops.trace` builds a dynamic identity mask on TensorFlow (29 graph ops for one
`(d, d)` matrix); the sum of the diagonal below is the same number in 5.
"""

from keras import ops


def trace(matrix):
    """`sum_i matrix[..., i, i]`, the trace of each `(d, d)` matrix of a `(..., d, d)` tensor."""
    return ops.sum(ops.diagonal(matrix, axis1=-2, axis2=-1), axis=-1)


def damped(matrix, damping, identity):
    """`G_d = G + damping * (trace(G) / d) * I` for each `(d, d)` matrix `G` of `matrix`: damping relative to
    the mean eigenvalue, so that it means the same at any scale of `G`. `identity` is the `(d, d)` identity
    in `matrix`'s dtype; `damping` a Python float (0 returns `matrix` itself)."""
    if damping == 0:
        return matrix
    mean_eigenvalue = trace(matrix) / identity.shape[-1]
    return matrix + (damping * mean_eigenvalue)[..., None, None] * identity
