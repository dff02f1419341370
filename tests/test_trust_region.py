"""The trust region of LocalFisher (`max_step`): each consumer's whitened-kernel step is bounded."""

import os

import keras
import numpy as np
import pytest

from keras_sngd import LocalFisher
from keras_sngd.trust_region import bounded_step


def test_bounded_step_keeps_small_steps_and_shortens_large_ones():
    previous = np.ones((3, 4), "float32")  # size sqrt(12): relative radius 0.1 allows steps up to 0.346
    small = previous + 0.01
    (kept,), scale = bounded_step([small], [previous], 0.1, 4)
    np.testing.assert_allclose(np.asarray(kept), small)
    assert float(scale) == 1.0
    step = np.arange(12, dtype="float32").reshape(3, 4)
    (shortened,), scale = bounded_step([previous + step], [previous], 0.1, 4)
    taken = np.asarray(shortened) - previous
    np.testing.assert_allclose(np.linalg.norm(taken), 0.1 * np.sqrt(12), rtol=1e-5)
    np.testing.assert_allclose(taken / np.linalg.norm(taken), step / np.linalg.norm(step), rtol=1e-4, atol=1e-6)
    assert 0.0 < float(scale) < 1.0


def test_bounded_step_is_joint_over_kernel_and_bias():
    kernel, bias = np.ones((2, 2), "float32"), np.ones((2,), "float32")  # joint size sqrt(6)
    steps = np.full((2, 2), 3.0, "float32"), np.full((2,), 4.0, "float32")  # joint step sqrt(68)
    (new_kernel, new_bias), _ = bounded_step([kernel + steps[0], bias + steps[1]], [kernel, bias], 1.0, 2)
    taken_kernel, taken_bias = np.asarray(new_kernel) - kernel, np.asarray(new_bias) - bias
    joint = np.sqrt(np.sum(np.square(taken_kernel)) + np.sum(np.square(taken_bias)))
    np.testing.assert_allclose(joint, np.sqrt(6.0), rtol=1e-5)
    np.testing.assert_allclose(taken_bias / taken_kernel[0], 4.0 / 3.0, rtol=1e-5)


def test_zero_weights_can_move():
    zeros = np.zeros((3, 4), "float32")
    (moved,), _ = bounded_step([zeros + 1.0], [zeros], 0.1, 4)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(moved)), 0.1 * 1e-3 * 2.0, rtol=1e-5)


class _KernelSteps(keras.callbacks.Callback):
    """The kernel each training step's forward pass used (kept by the LocalFisher before `layer`)."""

    def __init__(self, local_fisher):
        super().__init__()
        self.local_fisher = local_fisher
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        state = self.local_fisher._step_bound_state
        kernel, bias = (np.array(variable.numpy()) for variable in state["previous"][0])
        self.kernels.append(np.concatenate([kernel.ravel(), bias]))


def _model(max_step, update_every=1000):
    return keras.Sequential([
        keras.Input((6,)),
        LocalFisher(max_step=max_step, update_every=update_every),
        keras.layers.Dense(5, activation="tanh"),
        LocalFisher(max_step=max_step, update_every=update_every),
        keras.layers.Dense(3),
    ])


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(256, 6)).astype("float32") * 5.0, rng.integers(0, 3, 256).astype("int32")


def test_consumer_steps_bounded_by_max_step():
    radius = 0.01
    model = _model(radius)
    model.compile(keras.optimizers.SGD(10.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = _KernelSteps(model.layers[0])
    model.fit(*_data(), batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[steps])
    for before, after in zip(steps.kernels[:-1], steps.kernels[1:]):
        limit = radius * max(np.linalg.norm(before), 1e-3 * np.sqrt(5))
        assert 0 < np.linalg.norm(after - before) <= limit * (1 + 1e-4)
    assert model.layers[0].bounded_step_count > 0
    assert np.all(np.isfinite(model.predict(_data()[0][:8], verbose=0)))


def test_without_max_step_steps_are_unbounded():
    model = _model(None)
    model.compile(keras.optimizers.SGD(10.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense = model.layers[1]
    before = np.array(dense.kernel.numpy())
    model.fit(*_data()[:1], _data()[1], batch_size=256, epochs=1, shuffle=False, verbose=0)
    assert np.linalg.norm(np.array(dense.kernel.numpy()) - before) > 0.01 * np.linalg.norm(before) * 10
    assert model.layers[0].bounded_step_count == 0 and model.layers[0]._step_bound_state is None


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), True, "0.1"])
def test_max_step_validation(value):
    with pytest.raises(ValueError, match="max_step"):
        LocalFisher(max_step=value)


def test_max_step_config_and_saving(tmp_path):
    model = _model(0.05, update_every=4)
    model.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*_data(), batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert LocalFisher.from_config(model.layers[0].get_config()).max_step == 0.05
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(_data()[0][:8], verbose=0), model.predict(_data()[0][:8], verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert loaded.layers[0].max_step == 0.05
    loaded.compile(keras.optimizers.SGD(1.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(*_data(), batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert np.all(np.isfinite(loaded.predict(_data()[0][:8], verbose=0)))


def test_reconstruct_gives_convolutional_networks_the_stable_defaults_for_either_layer_class():
    """`reconstruct` sets `damping`, `update_every` and `max_step` for a CNN; the NGD baseline's
    statistics-only layer (no trust region) gets the first two, and the user's arguments win."""
    from keras_sngd import FisherStatistics
    from keras_sngd import reconstruct

    plain = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    local = [layer for layer in reconstruct(plain).layers if isinstance(layer, LocalFisher)]
    assert [(layer.damping, layer.update_every, layer.max_step) for layer in local] == [(0.1, 10, 0.05)] * 2
    statistics = [layer for layer in reconstruct(plain, layer_class=FisherStatistics).layers
                  if isinstance(layer, FisherStatistics)]
    assert [(layer.damping, layer.update_every) for layer in statistics] == [(0.1, 10)] * 2
    mine = reconstruct(plain, local_fisher_arguments={"damping": 0.3, "max_step": None})
    assert [(layer.damping, layer.max_step) for layer in mine.layers if isinstance(layer, LocalFisher)] == [(0.3, None)] * 2
