"""Frozen layers: `reconstruct` gives them no LocalFisher, and a LocalFisher whose consumers are frozen
after `reconstruct` rests in `fit` (TensorFlow, JAX and PyTorch, in subprocesses: `scripts/frozen_consumers_check.py`)."""

import os

import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "frozen_consumers_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_frozen_consumers(backend):
    report = run_on_installed(backend, SCRIPT)
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


def test_reconstruct_again_after_unfreezing_whitens_the_unfrozen_layer():
    """The fine-tuning workflow: train with a frozen layer, unfreeze it, reconstruct the trained
    reconstruction again: the unfrozen layer gets a LocalFisher, the others keep theirs and their state,
    and the function does not change."""
    import keras
    import numpy as np

    import keras_sngd

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    frozen = keras.layers.Dense(8, activation="relu", name="frozen")
    frozen.trainable = False
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(frozen(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 6), "float32"), rng.random((32, 2), "float32")
    sngd = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 2})
    sngd.compile(keras.optimizers.SGD(0.1), "mse")
    sngd.fit(x, y, batch_size=4, epochs=2, verbose=0)
    root = sngd.get_layer("hidden_local_fisher").inverse_root.numpy()
    assert int(sngd.get_layer("hidden_local_fisher").refresh_count.numpy()) >= 1
    sngd.get_layer("frozen").trainable = True
    again, report = keras_sngd.reconstruct(sngd, return_report=True, local_fisher_arguments={"update_every": 2})
    assert [path for path, *_ in report.inserted] == ["frozen"]
    np.testing.assert_array_equal(again.get_layer("hidden_local_fisher").inverse_root.numpy(), root)
    np.testing.assert_allclose(again.predict(x, verbose=0), sngd.predict(x, verbose=0), rtol=0, atol=0)
    again.compile(keras.optimizers.SGD(0.1), "mse")
    again.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(again.get_layer("frozen_local_fisher").step.numpy()) == 8
