"""The refresh follows need: with `refresh_tolerance`, a due refresh runs only if `U` no longer whitens `G`."""

import numpy as np
import pytest
from tests.reference import damped
from tests.reference import spd_matrix

from keras_sngd import LocalFisher
from keras_sngd.refresh import warm_refresh
from keras_sngd.refresh import whitening_drift


@pytest.mark.parametrize("dim", [16, 200])
def test_drift_estimates_the_whitening_deviation(dim):
    fisher = spd_matrix(dim, 1e2, seed=1)
    previous = spd_matrix(dim, 1e2, seed=2)
    inverse_root = np.asarray(warm_refresh(previous.astype("float32"), np.eye(dim, dtype="float32"), 0.01).inverse_root)
    u = inverse_root.astype(np.float64)
    exact = np.linalg.norm(u.T @ damped(fisher, 0.01) @ u - np.eye(dim)) / np.sqrt(dim)
    estimate = float(whitening_drift(fisher.astype("float32"), inverse_root, 0.01))
    assert 0.5 * exact < estimate < 1.5 * exact
    refreshed = np.asarray(warm_refresh(fisher.astype("float32"), inverse_root, 0.01).inverse_root)
    assert float(whitening_drift(fisher.astype("float32"), refreshed, 0.01)) < 1e-3


def batches(scale, count, rng):
    return [(rng.standard_normal((256, 6)) * scale + 0.3).astype("float32") for _ in range(count)]


def test_stationary_statistics_skip_refreshes_until_the_data_changes():
    rng = np.random.default_rng(0)
    layer = LocalFisher(update_every=2, momentum=0.5, refresh_tolerance=0.3)
    scales = rng.uniform(0.3, 3.0, 6)
    for batch in batches(scales, 10, rng):
        layer(batch, training=True)
    assert int(layer.refresh_count.numpy()) == 1  # the first one, from U = I; then nothing drifted
    for batch in batches(scales * 4.0, 4, rng):
        layer(batch, training=True)
    assert int(layer.refresh_count.numpy()) >= 2 and int(layer.failed_refresh_count.numpy()) == 0
    assert int(layer.step.numpy()) == 14


def test_zero_tolerance_refreshes_whenever_due():
    rng = np.random.default_rng(0)
    layer = LocalFisher(update_every=2, momentum=0.5, refresh_tolerance=0.0)
    for batch in batches(np.ones(6), 10, rng):
        layer(batch, training=True)
    assert int(layer.refresh_count.numpy()) == 5


def test_bad_tolerance_raises():
    with pytest.raises(ValueError, match="refresh_tolerance"):
        LocalFisher(refresh_tolerance=-0.1)
