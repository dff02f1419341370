"""How to invert a K-FAC factor inside the train step: time per inverse of a damped 785 x 785 factor.

    python benchmarks/kfac_inverse_timing.py                       # TensorFlow: graph and XLA
    KERAS_BACKEND=jax python benchmarks/kfac_inverse_timing.py     # JAX (jit)

The factor is the input factor of the paper's MLP's first layer from one batch of 64 (rank 64) plus
1e-3 I. Candidates: `keras.ops.linalg.inv`, a Cholesky factor and a triangular solve, `eigh`, and the
package's `newton_schulz` (inverse = U U). It prints milliseconds per inverse (mean of 3 after a warm-up
call, which also compiles) and the residual `||M^-1 M - I||_F / sqrt(d)`. `keras_sngd.optimizers.KFAC`
uses `inv`, the fastest in TensorFlow graph mode (Keras's default on CPU) and on JAX here; Cholesky is
more accurate and about as fast under TensorFlow XLA.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_sngd import newton_schulz  # noqa: E402


def inverse(matrix):
    return ops.linalg.inv(matrix)


def cholesky(matrix):
    lower = ops.linalg.cholesky(matrix)
    lower_inverse = ops.linalg.solve_triangular(lower, ops.eye(matrix.shape[0]), lower=True)
    return ops.matmul(ops.transpose(lower_inverse), lower_inverse)


def eigh(matrix):
    values, vectors = ops.linalg.eigh(matrix)
    return ops.matmul(vectors / values, ops.transpose(vectors))


def newton_schulz_inverse(matrix):
    _, inverse_root = newton_schulz(matrix)
    return ops.matmul(inverse_root, inverse_root)


def compiled(function, jit):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, jit_compile=jit)


def main():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 785)).astype("float32")
    matrix = rows.T @ rows / 64 + 1e-3 * np.eye(785, dtype="float32")
    modes = [False, True] if keras.backend.backend() == "tensorflow" else [True]
    for name, function in [("inv", inverse), ("cholesky", cholesky), ("eigh", eigh), ("newton_schulz", newton_schulz_inverse)]:
        for jit in modes:
            run = compiled(function, jit)
            np.asarray(run(matrix))
            start = time.perf_counter()
            for _ in range(3):
                result = np.asarray(run(matrix))
            seconds = (time.perf_counter() - start) / 3
            residual = np.linalg.norm(result @ matrix - np.eye(785)) / np.sqrt(785)
            mode = "jit" if jit else "graph"
            print(f"{keras.backend.backend()} {name:14s} {mode:5s} {seconds * 1000:8.1f} ms  residual {residual:.1e}", flush=True)


if __name__ == "__main__":
    main()
