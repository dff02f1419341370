"""Newton-Schulz iterations of one refresh of the 784-wide input layer: cold against warm-started.

Real Fashion-MNIST pixels: the "previous" statistics are the second moment of 3,000 images, the current
ones the moving average (momentum 0.99) after 50 more batches of 50 images, as between two refreshes of
the paper MLP's input LocalFisher (damping 0.01, float32). Prints the iteration count and final residual of

- cold: `newton_schulz(G_d)` from scratch (Frobenius pre-scaling);
- warm: `A = U_old^T G_d U_old` with `U_old` from the previous statistics, for each pre-scaling, stopping
  at residual 1e-5 as `warm_refresh` does;

and the error of the warm `U U^T` against `G_d^-1` (float64 inverse).

    python benchmarks/refresh_iterations.py
"""

import numpy as np

from keras_sngd.datasets import load_dataset
from keras_sngd.newton_schulz import coupled_newton_schulz
from keras_sngd.refresh import warm_refresh

DAMPING = 0.01


def main():
    images, _ = load_dataset("fashion_mnist", "train")
    pixels = images.reshape(len(images), -1).astype("float32") / 255.0

    def moment(rows):
        return (rows.T @ rows / len(rows)).astype("float32")

    previous = moment(pixels[:3000])
    current = previous.copy()
    for batch in range(50):
        current = 0.99 * current + 0.01 * moment(pixels[3000 + 50 * batch: 3050 + 50 * batch])
    dim = current.shape[0]
    damped = current.astype(np.float64) + DAMPING * np.trace(current) / dim * np.eye(dim)
    old = np.asarray(warm_refresh(previous, np.eye(dim, dtype="float32"), DAMPING).inverse_root, np.float64)
    whitened = (old.T @ damped @ old).astype("float32")
    cold = coupled_newton_schulz(current, damping=DAMPING)
    print(f"cold newton_schulz(G_d): {int(cold.iterations)} iterations, residual {float(cold.residual):.1e}")
    eigenvalues = np.linalg.eigvalsh(whitened.astype(np.float64))
    print(f"warm A = U_old^T G_d U_old: eigenvalues in [{eigenvalues[0]:.2f}, {eigenvalues[-1]:.2f}]")
    for scaling in ("frobenius", "near_identity", "power"):
        result = coupled_newton_schulz(whitened, tolerance=1e-5, scaling=scaling)
        print(f"  warm, {scaling} pre-scaling: {int(result.iterations)} iterations, residual {float(result.residual):.1e}")
    result = warm_refresh(current, old.astype("float32"), DAMPING)
    inverse_root = np.asarray(result.inverse_root, np.float64)
    expected = np.linalg.inv(damped)
    error = np.linalg.norm(inverse_root @ inverse_root.T - expected) / np.linalg.norm(expected)
    print(f"warm_refresh: {int(result.iterations)} iterations, accepted {bool(result.accepted)}, "
          f"relative error of U U^T against G_d^-1: {error:.1e}")


if __name__ == "__main__":
    main()
