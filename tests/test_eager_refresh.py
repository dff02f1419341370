"""`LocalFisher.refresh()`: one refresh now, outside any train step, function-preserving."""

import keras
import numpy as np
from tests.reference import damped
from tests.reference import relative_error

from keras_sngd import FisherStatistics
from keras_sngd import LocalFisher


def trained_model(layer, update_every_steps=3):
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(3, activation="tanh")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    for _ in range(update_every_steps):
        batch = (rng.standard_normal((32, 8)) * rng.uniform(0.2, 3.0, 8) + 0.7).astype("float32")
        model.train_on_batch(batch, np.zeros((32, 3), "float32"))
    return model, rng.standard_normal((6, 8)).astype("float32")


def inverse_fisher_error(layer):
    fisher = damped(layer.second_moment.numpy() / layer.statistics_weight.numpy(), layer.damping)
    inverse_root = layer.inverse_root.numpy().astype(np.float64)
    return relative_error(inverse_root @ inverse_root.T, np.linalg.inv(fisher))


def test_refresh_keeps_outputs_and_whitens():
    layer = LocalFisher(update_every=1000)
    model, probe = trained_model(layer)
    before = np.asarray(model(probe))
    assert int(layer.refresh_count.numpy()) == 0
    assert layer.refresh() is True
    assert int(layer.refresh_count.numpy()) == 1 and layer.refresh_mode.kind == "function-preserving"
    assert inverse_fisher_error(layer) < 1e-4
    np.testing.assert_allclose(np.asarray(model(probe)), before, rtol=1e-4, atol=1e-5)
    # A second refresh on the same statistics is warm: A = I, nothing moves.
    kernel = np.array(model.layers[1].kernel.numpy())
    assert layer.refresh() is True
    np.testing.assert_allclose(model.layers[1].kernel.numpy(), kernel, atol=1e-4 * np.abs(kernel).max())


def test_refresh_before_statistics_does_nothing():
    layer = LocalFisher()
    layer.build((None, 4))
    assert layer.refresh() is False
    assert int(layer.refresh_count.numpy()) == 0 and int(layer.failed_refresh_count.numpy()) == 0


def test_failed_refresh_returns_false_and_keeps_state():
    layer = LocalFisher(update_every=1000, iterations=1)
    model, _ = trained_model(layer)
    kernel = np.array(model.layers[1].kernel.numpy())
    assert layer.refresh() is False
    assert int(layer.failed_refresh_count.numpy()) == 1
    np.testing.assert_array_equal(layer.inverse_root.numpy(), np.eye(8, dtype="float32"))
    np.testing.assert_array_equal(model.layers[1].kernel.numpy(), kernel)


def test_statistics_layer_refresh():
    layer = FisherStatistics(update_every=1000)
    trained_model(layer)
    assert layer.refresh() is True and inverse_fisher_error(layer) < 1e-4


def test_refresh_outside_step_skips_the_in_step_refresh():
    layer = LocalFisher(update_every=1)
    layer._refresh_outside_step = True
    trained_model(layer)
    assert int(layer.step.numpy()) == 3 and int(layer.refresh_count.numpy()) == 0
    assert float(layer.statistics_weight.numpy()) > 0
