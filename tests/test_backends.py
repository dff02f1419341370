"""The core runs on every Keras 3 backend: train on JAX (and TensorFlow) in subprocesses."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "backend_check.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on(backend, script=SCRIPT):
    """Run `script` (a file of tests/scripts) with `KERAS_BACKEND=backend`; its last line, a JSON report."""
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    environment["PYTHONPATH"] = os.pathsep.join([ROOT, environment.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=environment, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_on_installed(backend, script=SCRIPT):
    """`run_on(backend, script)`, skipped with how to install the backend when it is missing (torch is not
    among the test extras: its default wheel brings GBs of CUDA libraries)."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (torch: pip install torch --index-url "
                    "https://download.pytorch.org/whl/cpu, or KERAS_SNGD_TORCH=1 bash .ci/run)")
    return run_on(backend, script)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_training_and_refresh_on_backend(backend):
    if importlib.util.find_spec(backend) is None:
        hint = "pip install -e '.[tests]' installs it"
        if backend == "torch":
            # The registry's default torch brings GBs of CUDA libraries: an opt-in (.ci/run, KERAS_SNGD_TORCH=1).
            hint = "pip install torch --index-url https://download.pytorch.org/whl/cpu, or KERAS_SNGD_TORCH=1 bash .ci/run"
        pytest.skip(f"{backend} is not installed ({hint})")
    report = run_on(backend)
    assert report["backend"] == backend
    assert report["step"] == 24 and report["refresh_count"] == 6 and report["failed_refresh_count"] == 0
    assert report["layer_error"] < 1e-3 and report["newton_schulz_error"] < 1e-3
    assert report["residual"] < 1e-4
    assert all(loss == loss for loss in report["losses"]) and report["losses"][-1] < report["losses"][0]
    # reconstruct -> fit (no callback) -> fold -> save/load, on every backend.
    assert report["inserted"] == 2 and report["same_at_start"] == 0.0
    assert report["lr0_change"] < 1e-4
    assert report["sngd_refresh_counts"] == [12, 12]  # (12 + 36 steps) / update_every 4
    assert all(mode.startswith("function-preserving") for mode in report["sngd_refresh_modes"])
    assert all(loss == loss for loss in report["sngd_losses"]) and report["sngd_losses"][-1] < report["sngd_losses"][0]
    assert not report["folded_has_local_fisher"] and report["fold_error"] < 1e-4
    assert report["load_error"] == 0.0 and report["loaded_state_equal"]
    # The batch-leverage scale ran (c > 1 with 8-row batches) with the function kept (lr0_change above),
    # and it is saved.
    assert max(report["sngd_leverage"]) > 1.0 and report["loaded_leverage"] == report["sngd_leverage"]
    if backend == "jax":
        # Every product of the refresh is traced in full float32 (not TensorFloat-32 on a GPU).
        assert report["refresh_products"] > 0
        assert report["refresh_highest_products"] == report["refresh_products"]
        # JAX without jax_enable_x64 has no float64: asking for it is an error, not a silent float32.
        assert report["float64_error"] is not None and "jax_enable_x64" in report["float64_error"]
    else:
        assert report["float64_error"] is None
    # On JAX the optimizer re-expresses the kernel (`keras_sngd.handoff`): the same mode everywhere.
    assert report["refresh_mode"] == "function-preserving (re-expresses 'dense')"
