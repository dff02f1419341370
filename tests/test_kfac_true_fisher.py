"""True-Fisher K-FAC (`prepare_kfac(model, fisher="true")`): sampled-label copies inside plain `model.fit`."""

import keras
import numpy as np
import pytest

from keras_sngd.optimizers import KFAC
from keras_sngd.optimizers import prepare_kfac
from keras_sngd.optimizers.kfac_layers import KFACLayerMixin
from tests.models import mlp
from tests.models import small_cnn


def classification_data(count=64, features=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, features)).astype("float32"), rng.integers(0, classes, count).astype("int32")


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_copies_leave_outputs_and_the_sgd_trajectory_unchanged():
    inputs, labels = classification_data()
    plain = mlp()
    twin = keras.models.clone_model(plain)
    twin.set_weights(plain.get_weights())
    prepared = prepare_kfac(plain, fisher="true", sampled_rows=8, seed=1)
    np.testing.assert_array_equal(prepared.predict(inputs, verbose=0), plain.predict(inputs, verbose=0))
    for model in (prepared, twin):
        model.compile(keras.optimizers.SGD(0.1), loss())
        model.fit(inputs, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    # The copies reach no weight gradient: the same weights as the plain model after 8 SGD steps.
    np.testing.assert_allclose(prepared.predict(inputs, verbose=0), twin.predict(inputs, verbose=0), atol=1e-6)
    kfac_layers = [layer for layer in prepared._flatten_layers() if isinstance(layer, KFACLayerMixin)]
    assert len(kfac_layers) == 3
    assert all(float(layer.factor_weight.numpy()) > 0.0 for layer in kfac_layers)


def test_output_factor_estimates_the_true_fisher():
    # One softmax layer: the exact true-Fisher factor is S = mean_j (diag(p_j) - p_j p_j^T), which the
    # sampled copies estimate; the empirical factor (true labels) is a different matrix.
    inputs, labels = classification_data(count=32, features=5, classes=4, seed=2)
    inputs *= 2.0
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    prepared = prepare_kfac(plain, fisher="true", sampled_rows=32, factor_decay=0.995, seed=3)
    prepared.compile(keras.optimizers.SGD(0.0), loss())
    steps = 600
    prepared.fit(np.tile(inputs, (steps, 1)), np.tile(labels, steps), batch_size=32, shuffle=False, verbose=0)
    layer = next(layer for layer in prepared._flatten_layers() if isinstance(layer, KFACLayerMixin))
    _, output_factor = (keras.ops.convert_to_numpy(factor) for factor in layer.factors())
    logits = plain.predict(inputs, verbose=0).astype("float64")
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    exact = np.mean([np.diag(p) - np.outer(p, p) for p in probabilities], axis=0)
    residuals = probabilities - np.eye(4)[labels]
    empirical = residuals.T @ residuals / len(labels)
    error = np.linalg.norm(output_factor - exact) / np.linalg.norm(exact)
    assert error < 0.1, error
    assert error < 0.5 * np.linalg.norm(empirical - exact) / np.linalg.norm(exact)


def test_true_fisher_trains_with_kfac_and_round_trips(tmp_path):
    inputs, labels = classification_data()
    prepared = prepare_kfac(mlp(), fisher="true", seed=1)
    prepared.compile(KFAC(), loss())
    history = prepared.fit(inputs, labels, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = str(tmp_path / "true_fisher.keras")
    prepared.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), prepared.predict(inputs, verbose=0), atol=1e-6)
    assert loaded.optimizer.preconditioned_layers == prepared.optimizer.preconditioned_layers


def test_true_fisher_refuses_weights_outside_kfac_layers():
    with pytest.raises(ValueError, match="BatchNormalization"):
        prepare_kfac(small_cnn(), fisher="true")


def test_true_fisher_refuses_several_outputs():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    with pytest.raises(ValueError, match="one output"):
        prepare_kfac(model, fisher="true")


def test_fisher_choice_is_checked():
    with pytest.raises(ValueError, match="fisher"):
        prepare_kfac(mlp(), fisher="exact")
