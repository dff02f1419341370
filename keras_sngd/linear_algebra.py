"""Small matrix helpers in `keras.ops` that keep the traced train step small.

Every LocalFisher adds its statistics and refresh to the compiled train step, so the graph ops they
trace are paid once per layer at compile time (tracing, then TensorFlow's graph optimization or XLA's
compilation). `keras.ops.trace` builds a dynamic identity mask on TensorFlow (29 graph ops for one
`(d, d)` matrix); the sum of the diagonal below is the same number in 5.
"""

from keras import ops


def trace(matrix):
    """`sum_i matrix[..., i, i]`, the trace of each `(d, d)` matrix of a `(..., d, d)` tensor."""
    return ops.sum(ops.diagonal(matrix, axis1=-2, axis2=-1), axis=-1)
