"""The warm-started refresh: `U <- U A^(-1/2)`, `A = U^T G_d U`, keeps `U U^T = G_d^-1` in few iterations."""

import keras
import numpy as np
from tests.reference import damped
from tests.reference import eigh_roots
from tests.reference import relative_error
from tests.reference import spd_matrix

from keras_sngd import LocalFisher
from keras_sngd.newton_schulz import coupled_newton_schulz
from keras_sngd.refresh import warm_refresh

DAMPING = 1e-3


def drifting_fishers(dim, count, seed=0):
    """Second moments of data whose distribution drifts a little between refreshes."""
    rng = np.random.default_rng(seed)
    base = spd_matrix(dim, 1e3, seed=seed)
    drift = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    for step in range(count):
        mixing = np.eye(dim) + 0.02 * step * drift
        yield (mixing @ base @ mixing.T).astype("float32").astype(np.float64)


def test_sequence_keeps_inverse_fisher_with_fewer_iterations_than_cold():
    dim = 64
    inverse_root = np.eye(dim, dtype="float32")
    warm_iterations = cold_iterations = 0
    for index, fisher in enumerate(drifting_fishers(dim, 6)):
        result = warm_refresh(fisher.astype("float32"), inverse_root, DAMPING)
        assert bool(result.accepted)
        # U_new A^(1/2) = U_old: the consumer's effective kernel U W' does not move.
        np.testing.assert_allclose(
            np.asarray(result.inverse_root, np.float64) @ np.asarray(result.mixing, np.float64), inverse_root,
            atol=2e-4 * np.abs(inverse_root).max(),
        )
        inverse_root = np.asarray(result.inverse_root)
        expected = np.linalg.inv(damped(fisher, DAMPING))
        product = inverse_root.astype(np.float64) @ inverse_root.T.astype(np.float64)
        assert relative_error(product, expected) < 1e-3, index
        if index:  # the first refresh starts from U = I, a cold start
            warm_iterations += int(result.iterations)
            cold_iterations += int(coupled_newton_schulz(fisher.astype("float32"), damping=DAMPING).iterations)
    assert not np.allclose(inverse_root, inverse_root.T, atol=1e-3)  # no longer symmetric
    assert warm_iterations < 0.6 * cold_iterations, (warm_iterations, cold_iterations)


def test_first_refresh_is_the_symmetric_inverse_root():
    fisher = spd_matrix(16, 1e2)
    result = warm_refresh(fisher.astype("float32"), np.eye(16, dtype="float32"), DAMPING)
    root, inverse_root = eigh_roots(damped(fisher, DAMPING))
    assert relative_error(result.inverse_root, inverse_root) < 1e-4
    assert relative_error(result.mixing, root) < 1e-4


def test_non_finite_statistics_keep_inverse_root_and_mixing_identity():
    fisher = spd_matrix(8, 10.0).astype("float32")
    fisher[1, 2] = np.nan
    previous = np.asarray(warm_refresh(spd_matrix(8, 10.0).astype("float32"), np.eye(8, dtype="float32"), DAMPING).inverse_root)
    result = warm_refresh(fisher, previous, DAMPING)
    assert not bool(result.accepted)
    np.testing.assert_array_equal(np.asarray(result.inverse_root), previous)
    np.testing.assert_array_equal(np.asarray(result.mixing), np.eye(8, dtype="float32"))


def test_refreshes_on_drifting_data_whiten_and_keep_outputs():
    rng = np.random.default_rng(0)
    local_fisher = LocalFisher(update_every=2, momentum=0.5, damping=DAMPING)
    model = keras.Sequential([keras.Input((10,)), local_fisher, keras.layers.Dense(4)])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    probe = rng.standard_normal((8, 10)).astype("float32")
    before = np.asarray(model(probe))
    scales = rng.uniform(0.3, 3.0, 10)
    for step in range(12):
        batch = (rng.standard_normal((64, 10)) * scales * (1.0 + 0.1 * step) + 0.5).astype("float32")
        model.train_on_batch(batch, np.zeros((64, 4), "float32"))
    assert int(local_fisher.refresh_count.numpy()) == 6 and int(local_fisher.failed_refresh_count.numpy()) == 0
    np.testing.assert_allclose(np.asarray(model(probe)), before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    inverse_root = local_fisher.inverse_root.numpy().astype(np.float64)
    fisher = damped(local_fisher.second_moment.numpy() / local_fisher.statistics_weight.numpy(), DAMPING)
    # Whitening: U^T G_d U = I (U is not G^(-1/2) itself, it is not symmetric).
    np.testing.assert_allclose(inverse_root.T @ fisher @ inverse_root, np.eye(10), atol=1e-3)
    assert not np.allclose(inverse_root, inverse_root.T, atol=1e-4)
