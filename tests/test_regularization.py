"""A consumer's kernel regularizer acts on the effective kernel `U W'` (`keras_sngd.regularization`): the
regularization loss equals the folded model's, a refresh leaves the loss unchanged at learning rate 0, and
saving keeps the user's regularizer; on TensorFlow in-process, on JAX and PyTorch in subprocesses."""

import os

import numpy as np
import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "regularizer_check.py")


def check(report):
    for name in ("dense", "low_rank"):
        case = report[name]
        assert case["low_rank"] == [name == "low_rank", False]
        assert min(case["refreshes"]) >= 4
        assert case["regularization"] == pytest.approx(case["folded_regularization"], rel=1e-5)
        losses = np.asarray(case["lr0_losses"])
        assert np.all(np.abs(losses - losses[0]) <= 1e-6 * abs(losses[0])), losses
        assert case["loaded_regularization"] == pytest.approx(case["regularization"], rel=1e-6)
        assert case["config_regularizer"] == "L2"


def test_regularizers_act_on_the_effective_kernel_on_tensorflow():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the in-process case is the TensorFlow one")
    from tests.scripts import regularizer_check

    check(regularizer_check.report())


def test_the_check_fails_with_the_regularizers_left_on_the_whitened_kernel(monkeypatch):
    # The negative control: the user's penalty on W' differs from the folded model's and jumps at refreshes.
    import keras

    import keras_sngd.local_fisher

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the in-process case is the TensorFlow one")
    from tests.scripts import regularizer_check

    monkeypatch.setattr(keras_sngd.local_fisher, "install_effective_regularizer", lambda fisher, binding: None)
    case = regularizer_check.case(40, None)
    assert case["regularization"] != pytest.approx(case["folded_regularization"], rel=1e-3)
    losses = np.asarray(case["lr0_losses"])
    assert np.abs(losses - losses[0]).max() > 1e-4 * abs(losses[0])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_regularizers_act_on_the_effective_kernel_on_backend(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    check(report)
