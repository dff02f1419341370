"""`keras.models.clone_model` of a reconstruction keeps the weight list and the trust region
(`scripts/clone_model_check.py` on every backend, in subprocesses)."""

import os

import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "clone_model_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_clone_takes_the_weights_and_bounds_its_steps(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    # The trust region's carriers are part of both weight lists: `set_weights` takes the original's list.
    count = report["weight_counts"][0]
    assert report["weight_counts"] == [count, count] and report["loaded_weight_count"] == count
    assert report["clone_error"] < 1e-6
    # Prepared from its config at its first training call: no fallback, and every step bounded at once.
    assert report["unprepared_warnings"] == []
    for name, largest in report["largest"].items():
        assert 0.049 < largest <= 0.05 * (1 + 1e-5), (name, report)
    assert report["load_error"] < 1e-6
