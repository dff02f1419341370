"""Frozen layers: `reconstruct` gives them no LocalFisher, and a LocalFisher whose consumers are frozen
after `reconstruct` rests in `fit` (TensorFlow, JAX and PyTorch, in subprocesses: `scripts/frozen_consumers_check.py`)."""

import importlib.util
import os

import pytest

from tests.test_backends import run_on

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "frozen_consumers_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_frozen_consumers(backend):
    if importlib.util.find_spec(backend) is None:
        # torch is not among the test extras (a large download); the same check runs wherever it is installed.
        pytest.skip(f"{backend} is not installed (pip install torch to run this check on the PyTorch backend)")
    report = run_on(backend, SCRIPT)
    assert report["backend"] == backend
    # The frozen layer is skipped with its reason; the layer after it reads fixed features (damping 1).
    assert report["skipped"] == [["frozen", True]]
    assert report["inserted"] == ["hidden", "out"]
    assert report["hidden_damping"] == 1.0
    assert report["frozen_kernel_unchanged"] and not report["warnings_skipped"]
    # Frozen after reconstruct: no statistics, no refresh, its kernel untouched, no optimizer warning about
    # the LocalFisher's transient variables; the others train on; fold still matches.
    assert report["resting_state_unchanged"] and report["resting_kernel_unchanged"]
    assert not report["warnings_resting"]
    assert report["out_steps"] == 16
    assert report["fold_error"] < 1e-5
    # Unfrozen: it trains again.
    assert report["unfrozen_steps"] == 8 and report["unfrozen_statistics_moved"]
