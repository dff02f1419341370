import doctest

import numpy as np
import pytest
import tensorflow as tf
from tests.reference import damped
from tests.reference import eigh_roots
from tests.reference import relative_error
from tests.reference import spd_matrix
from tests.reference import whitening_residual

import importlib
from keras_sngd import newton_schulz
from keras_sngd.datasets.idx import load_idx_directory
from keras_sngd.newton_schulz import coupled_newton_schulz
from keras_sngd.newton_schulz import max_iterations

TOLERANCE = 1e-3


def check_against_eigh(matrix, root, inverse_root, tolerance=TOLERANCE):
    expected_root, expected_inverse_root = eigh_roots(matrix)
    errors = {
        "root": relative_error(root, expected_root),
        "inverse_root": relative_error(inverse_root, expected_inverse_root),
        "whitening": whitening_residual(inverse_root, matrix),
    }
    assert all(np.isfinite(list(errors.values()))), errors
    assert max(errors.values()) <= tolerance, errors
    return errors


# float64 up to 512 (1024 took 17 s for three cases on 2 cores; float32 below still covers 1024).
@pytest.mark.parametrize("dim", [8, 64, 256, 512])
@pytest.mark.parametrize("condition_number", [1e2, 1e4, 1e6])
def test_float64_meets_tolerance_up_to_condition_1e6(dim, condition_number):
    matrix = spd_matrix(dim, condition_number, seed=dim)
    root, inverse_root = newton_schulz(matrix.astype("float32"), dtype="float64")
    check_against_eigh(matrix, root, inverse_root)


@pytest.mark.parametrize("dim", [8, 64, 256, 1024])
@pytest.mark.parametrize("condition_number", [1e2, 1e3, 1e4])
def test_float32_meets_tolerance_up_to_condition_1e4(dim, condition_number):
    matrix = spd_matrix(dim, condition_number, seed=dim)
    root, inverse_root = newton_schulz(matrix.astype("float32"))
    assert root.dtype == "float32" and inverse_root.dtype == "float32"
    check_against_eigh(matrix, root, inverse_root)


@pytest.mark.parametrize("dim", [8, 256])
def test_float32_error_at_condition_1e6_is_within_rounding_bound(dim):
    # Any float32 method has a forward error of about eps32 * kappa / 2 = 6e-2 here: we stay below it.
    matrix = spd_matrix(dim, 1e6, seed=dim)
    root, inverse_root = newton_schulz(matrix.astype("float32"))
    errors = check_against_eigh(matrix, root, inverse_root, tolerance=np.finfo(np.float32).eps * 1e6 / 2)
    assert errors["root"] < TOLERANCE


@pytest.fixture(scope="module")
def fashion_mnist_second_moment(fashion_mnist_directory):
    images, _ = load_idx_directory(fashion_mnist_directory, "train")
    pixels = images[:10000].reshape(10000, -1).astype(np.float64) / 255.0
    return (pixels.T @ pixels / len(pixels)).astype(np.float32)


def test_fashion_mnist_second_moment_meets_tolerance(fashion_mnist_second_moment):
    damping = 1e-3
    matrix = damped(fashion_mnist_second_moment.astype(np.float64), damping)
    eigenvalues = np.linalg.eigvalsh(matrix)
    assert eigenvalues[-1] / eigenvalues[0] > 1e5  # badly conditioned, as real pixel statistics are
    root, inverse_root, residual = newton_schulz(
        fashion_mnist_second_moment, damping=damping, dtype="float64", return_residual=True
    )
    check_against_eigh(matrix, root, inverse_root)
    assert float(residual) < 1e-9


def test_fashion_mnist_float32_is_good_enough_for_training(fashion_mnist_second_moment):
    # What LocalFisher computes by default: residual accepted, inverse root within the float32 bound.
    matrix = damped(fashion_mnist_second_moment.astype(np.float64), 1e-3)
    _, inverse_root, residual = newton_schulz(fashion_mnist_second_moment, damping=1e-3, return_residual=True)
    assert float(residual) < 1e-4
    assert relative_error(inverse_root, eigh_roots(matrix)[1]) < 2e-2


def test_batch_equals_one_by_one():
    matrices = np.stack([spd_matrix(16, kappa, seed=i) for i, kappa in enumerate([1e1, 1e3, 1e5])])
    roots, inverse_roots, residuals = newton_schulz(matrices, dtype="float64", return_residual=True)
    assert roots.shape == inverse_roots.shape == (3, 16, 16) and residuals.shape == (3,)
    for matrix, root, inverse_root in zip(matrices, np.asarray(roots), np.asarray(inverse_roots)):
        check_against_eigh(matrix, root, inverse_root)
    nested = newton_schulz(matrices.reshape(3, 1, 16, 16), dtype="float64")[1]
    np.testing.assert_allclose(np.asarray(nested).reshape(3, 16, 16), np.asarray(inverse_roots), rtol=1e-10)


def test_damping_is_relative_to_mean_eigenvalue():
    matrix = spd_matrix(32, 1e3)
    for scale in [1e-4, 1.0, 1e4]:
        root, inverse_root = newton_schulz(scale * matrix, damping=0.1, dtype="float64")
        check_against_eigh(damped(scale * matrix, 0.1), root, inverse_root, tolerance=1e-9)


@pytest.mark.parametrize("scaling", ["frobenius", "trace", "near_identity", "power"])
def test_scalings_agree(scaling):
    matrix = spd_matrix(64, 1e3)
    root, inverse_root = newton_schulz(matrix, scaling=scaling)
    check_against_eigh(matrix, root, inverse_root)


def test_fixed_iterations():
    matrix = spd_matrix(64, 1e2)
    too_few = newton_schulz(matrix, iterations=2, return_residual=True)[2]
    enough = newton_schulz(matrix, iterations=max_iterations(64, 0.0, "float32"), return_residual=True)
    assert float(too_few) > 1e-2
    check_against_eigh(matrix, enough[0], enough[1])


def test_tolerance_stops_early():
    matrix = spd_matrix(64, 1e2)
    residual = float(newton_schulz(matrix, tolerance=1e-2, dtype="float64", return_residual=True)[2])
    tight = float(newton_schulz(matrix, dtype="float64", return_residual=True)[2])
    assert tight < 1e-12 < residual <= 1e-2


def test_max_iterations_bound_is_enough_and_grows_with_conditioning():
    assert max_iterations(784, 1e-3) < max_iterations(784, 1e-6) < max_iterations(784, 0.0)
    assert max_iterations(784, 1e-3, "float32") < max_iterations(784, 1e-3, "float64")
    # Matrix with an eigenvalue as small as the damping bound allows: converges within the bound.
    matrix = np.diag(np.r_[1.0, np.zeros(99)])
    _, inverse_root, residual = newton_schulz(matrix, damping=1e-3, dtype="float64", return_residual=True)
    check_against_eigh(damped(matrix, 1e-3), np.asarray(damped(matrix, 1e-3)) ** 0.5, inverse_root)
    assert float(residual) < 1e-12


def test_singular_and_zero_input_never_give_nan():
    singular = np.zeros((10, 10))
    singular[0, 0] = 1.0
    root, inverse_root, residual = newton_schulz(singular, damping=1e-2, return_residual=True)
    assert np.isfinite(np.asarray(inverse_root)).all() and float(residual) < 1e-4
    for matrix in [np.zeros((10, 10)), singular]:
        root, inverse_root, residual = newton_schulz(matrix, return_residual=True)
        assert np.isfinite(np.asarray(root)).all() and np.isfinite(np.asarray(inverse_root)).all()
        assert np.isfinite(float(residual)) and float(residual) > 1e-3  # reported as not converged


def test_huge_and_tiny_scales_do_not_overflow():
    matrix = spd_matrix(16, 1e2)
    for scale in [1e-30, 1e30]:
        root, inverse_root, residual = newton_schulz((scale * matrix).astype("float32"), return_residual=True)
        assert float(residual) < 1e-4
        expected_root, expected_inverse_root = eigh_roots(scale * matrix)
        assert relative_error(root, expected_root) < 1e-4
        assert relative_error(inverse_root, expected_inverse_root) < 1e-4


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_signalled_per_matrix(bad):
    good = spd_matrix(8, 10.0)
    broken = good.copy()
    broken[2, 3] = bad
    _, inverse_roots, residuals = newton_schulz(np.stack([good, broken]), return_residual=True)
    residuals = np.asarray(residuals)
    assert residuals[0] < 1e-5 and not np.isfinite(residuals[1])
    check_against_eigh(good, eigh_roots(good)[0], np.asarray(inverse_roots)[0])


def test_runs_under_xla():
    matrix = spd_matrix(32, 1e3).astype("float32")
    compiled = tf.function(lambda m: newton_schulz(m, damping=1e-4, return_residual=True), jit_compile=True)
    root, inverse_root, residual = compiled(tf.constant(matrix))
    check_against_eigh(damped(matrix, 1e-4), root, inverse_root)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"damping": -1.0}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"damping": True}, "damping"),
        ({"iterations": True}, "iterations"),
        ({"return_residual": 1}, "return_residual"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"scaling": "spectral"}, "scaling"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        newton_schulz(np.eye(3), **kwargs)


@pytest.mark.parametrize("shape", [(3,), (3, 4), (2, 3, 4)])
def test_non_square_input_raises(shape):
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(np.ones(shape))


def test_residual_and_iteration_count_are_reported():
    matrix = spd_matrix(32, 1e2)
    result = coupled_newton_schulz(matrix, dtype="float64")
    product = np.asarray(result.inverse_root) @ np.asarray(result.root)
    # The compensation cancels in Z Y: the residual is that of the returned pair.
    assert abs(float(result.residual) - np.linalg.norm(product - np.eye(32)) / np.sqrt(32)) < 1e-12
    assert 0 < int(result.iterations) <= max_iterations(32, 0.0, "float64")


def test_near_identity_scaling_converges_in_few_iterations():
    rng = np.random.default_rng(0)
    perturbation = rng.standard_normal((64, 64)) * 0.01
    matrix = np.eye(64) + 0.5 * (perturbation + perturbation.T)
    near = coupled_newton_schulz(matrix, scaling="near_identity", dtype="float64")
    frobenius = coupled_newton_schulz(matrix, scaling="frobenius", dtype="float64")
    check_against_eigh(matrix, near.root, near.inverse_root, tolerance=1e-9)
    assert int(near.iterations) < int(frobenius.iterations)


def test_docstring_example():
    failures, _ = doctest.testmod(importlib.import_module("keras_sngd.newton_schulz"), verbose=False)
    assert failures == 0


@pytest.mark.parametrize("dim,condition_number", [(8, 10.0), (64, 1e3), (512, 1e6)])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_power_estimate_is_a_close_lower_bound_at_any_scale(dim, condition_number, scale):
    """The estimate that pre-scales the warm refresh: at most the largest eigenvalue (float64 eigh), and
    close enough that the scaled spectrum stays where the iteration converges, for matrices far from
    float32's range limits (no normalization between its power steps)."""
    module = importlib.import_module("keras_sngd.newton_schulz")
    matrix = spd_matrix(dim, condition_number, seed=dim)
    largest = float(np.linalg.eigvalsh(matrix.astype("float64"))[-1])
    scaled = (scale * matrix).astype("float32")
    frobenius = float(np.linalg.norm(scaled.astype("float64")))
    estimate = float(module._power_estimate(tf.constant(scaled), tf.constant(frobenius, "float32"))) / scale
    assert 0.5 * largest < estimate <= largest * (1 + 1e-5)
    # A matrix near the identity, what a warm refresh sees: the estimate is nearly exact.
    near = np.eye(dim) + 0.01 * spd_matrix(dim, 10.0, seed=1) / dim
    estimate = float(module._power_estimate(tf.constant(near, "float32"), tf.constant(np.linalg.norm(near), "float32")))
    assert estimate == pytest.approx(np.linalg.eigvalsh(near)[-1], rel=1e-3)


def test_power_estimate_of_a_zero_matrix_is_zero():
    module = importlib.import_module("keras_sngd.newton_schulz")
    tiny = np.float32(2.0**-126)  # the floor `_prescale` gives a zero matrix's norm
    assert float(module._power_estimate(tf.zeros((6, 6)), tf.constant(tiny))) == 0.0


def test_power_estimate_finds_a_top_eigenvector_orthogonal_to_the_ones_vector():
    """A dominant direction with no component along `(1, ..., 1)` (centered features): the all-ones start
    alone would see only the bulk of the spectrum; the second, alternating start finds it."""
    module = importlib.import_module("keras_sngd.newton_schulz")
    dim = 16
    direction = np.zeros(dim)
    direction[:2] = [1.0, -1.0]
    direction /= np.linalg.norm(direction)
    matrix = (np.eye(dim) + 10.0 * np.outer(direction, direction)).astype("float32")
    largest = float(np.linalg.eigvalsh(matrix.astype("float64"))[-1])
    estimate = float(module._power_estimate(tf.constant(matrix), tf.constant(np.linalg.norm(matrix), "float32")))
    assert 0.9 * largest < estimate <= largest * (1 + 1e-5)
    # A batch of matrices: one estimate each.
    batch = np.stack([matrix, 2.0 * matrix])
    estimates = module._power_estimate(tf.constant(batch), tf.constant(np.linalg.norm(batch, axis=(1, 2)), "float32"))
    np.testing.assert_allclose(np.asarray(estimates), [estimate, 2.0 * estimate], rtol=1e-5)
