"""The optimizer's `gradient_accumulation_steps` and `use_ema` with LocalFishers
(`scripts/gradient_accumulation_check.py`, in subprocesses): accumulation refused with a ValueError where it
would corrupt the trust region (and on JAX the function-preserving refresh), and function-preserving
without the trust region on TensorFlow and PyTorch; `use_ema` refused everywhere."""

import os

import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "gradient_accumulation_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_gradient_accumulation_is_refused_or_keeps_the_function(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    # With the trust region: a clear error naming the argument and the way out (before the check, SGD(0)
    # moved the outputs by about their size, silently).
    error = report["default"].get("error", "")
    assert "gradient_accumulation_steps=2" in error, report
    assert ("max_step=None" in error) if backend != "jax" else ("JAX backend" in error), report
    if backend == "jax":
        # On JAX the refresh itself goes through the optimizer: refused without the trust region too.
        assert "gradient_accumulation_steps=2" in report["no_trust_region"].get("error", ""), report
    else:
        result = report["no_trust_region"]
        assert all(count >= 1 for count in result["refreshes"]), report
        assert result["relative_change"] < 1e-4, report
    # use_ema: refused with and without the trust region (a LocalFisher inserted by hand has none).
    for case in ("ema", "ema_by_hand"):
        if backend == "jax" and report[case].get("error_type") == "TypeError":
            # Keras's JAX trainer fails first, when it gathers the optimizer's state: it makes no moving
            # average for variables overwritten with their gradient (the layer's carriers) and then
            # reads one. An error too, before any step.
            continue
        assert report[case].get("error_type") == "ValueError", (case, report)
        assert "use_ema=True" in report[case]["error"], (case, report)
