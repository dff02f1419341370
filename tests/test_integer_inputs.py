"""A LocalFisher reading integer features (`keras.Input(dtype="int32")`, a lookup layer's one-hot, which
is int64 at run time) whitens them as floats, on every backend (`scripts/integer_inputs_check.py`, in
subprocesses): the function survives the refreshes and the trust region gets its gradients."""

import os

import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "integer_inputs_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_integer_features_keep_the_function_through_refreshes(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    assert report["same_at_start"] == 0.0
    assert all(count >= 1 for count in report["refreshes"]), report
    # Before the fix: 0.5 to 1.5 (U truncated to integers at the first refresh).
    assert report["relative_change"] < 1e-4, report
    assert report["output_dtype"] == "float32"
    assert report["missing_gradient_warnings"] == 0, report
    assert report["losses"][-1] < report["losses"][0], report
    assert report["fold_error"] < 1e-4, report
