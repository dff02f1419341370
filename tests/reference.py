"""Float64 references for the numerics tests."""

import numpy as np


def spd_matrix(dim, condition_number, seed=0):
    """A random symmetric positive definite matrix with eigenvalues log-spaced in [1/condition_number, 1],
    rounded to float32 and returned as float64 (so that the reference sees exactly the tested input)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eigenvalues = np.logspace(0.0, -np.log10(condition_number), dim)
    matrix = (basis * eigenvalues) @ basis.T
    matrix = 0.5 * (matrix + matrix.T)
    return matrix.astype(np.float32).astype(np.float64)


def eigh_roots(matrix):
    """`(matrix^(1/2), matrix^(-1/2))` by float64 `eigh`."""
    eigenvalues, vectors = np.linalg.eigh(np.asarray(matrix, dtype=np.float64))
    root = (vectors * np.sqrt(eigenvalues)) @ vectors.T
    inverse_root = (vectors / np.sqrt(eigenvalues)) @ vectors.T
    return root, inverse_root


def damped(matrix, damping):
    """`matrix + damping * mean_eigenvalue * I`, the damping `newton_schulz` and `LocalFisher` apply."""
    matrix = np.asarray(matrix, dtype=np.float64)
    dim = matrix.shape[-1]
    return matrix + damping * np.trace(matrix) / dim * np.eye(dim)


def relative_error(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def whitening_residual(inverse_root, matrix):
    """`||U A U - I||_F / sqrt(d)`."""
    inverse_root = np.asarray(inverse_root, dtype=np.float64)
    dim = matrix.shape[-1]
    return np.linalg.norm(inverse_root @ matrix @ inverse_root - np.eye(dim)) / np.sqrt(dim)
