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


def test_the_reconstruction_exports_for_serving(tmp_path):
    """`model.export` (a TensorFlow SavedModel with a `serve` endpoint) of a trained reconstruction
    computes what the model computes."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_sngd

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the in-process check runs on TensorFlow, the test suite's backend")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 10)).astype("float32"), rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    sngd = keras_sngd.reconstruct(keras.Model(inputs, keras.layers.Dense(3)(hidden)),
                                  local_fisher_arguments={"update_every": 2})
    sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sngd.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(int(layer.refresh_count.value) > 0 for layer in sngd.layers if isinstance(layer, keras_sngd.LocalFisher))
    sngd.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(x).numpy(), keras.ops.convert_to_numpy(sngd(x)), rtol=1e-6, atol=1e-6)
