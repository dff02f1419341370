"""Masked positions stay out of the statistics; a frozen LocalFisher runs in inference mode in `fit`."""

import keras
import numpy as np
import pytest

from keras_sngd import FisherStatistics
from keras_sngd import LocalFisher
from keras_sngd.statistics import batch_moments


def test_batch_moments_leave_masked_rows_out():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((4, 6, 3)).astype("float32") + 1.0
    mask = rng.uniform(size=(4, 6)) < 0.6
    inputs[~mask] = np.nan  # whatever a padded row holds must not reach the sums
    moments = batch_moments(inputs, -1, mask)
    rows = inputs[mask].astype(np.float64)
    np.testing.assert_allclose(np.asarray(moments.second_moment), rows.T @ rows / len(rows), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(moments.mean), rows.mean(axis=0), rtol=1e-5)
    assert float(moments.count) == mask.sum()


def test_embedding_mask_keeps_padding_out_of_lstm_statistics():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 0, 0, 0], [5, 9, 2, 6, 8]], "int32")
    embedding = keras.layers.Embedding(10, 4, mask_zero=True)
    local_fisher = LocalFisher(update_every=10)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), embedding, local_fisher, keras.layers.LSTM(3)])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.train_on_batch(tokens, np.zeros((3, 3), "float32"))
    vectors = np.asarray(embedding.embeddings.numpy(), np.float64)[tokens[tokens != 0]]
    assert float(local_fisher.statistics_weight.numpy()) > 0
    np.testing.assert_allclose(
        local_fisher.second_moment.numpy() / local_fisher.statistics_weight.numpy(),
        vectors.T @ vectors / len(vectors), rtol=1e-5, atol=1e-7,
    )
    np.testing.assert_allclose(
        local_fisher.mean.numpy() / local_fisher.statistics_weight.numpy(), vectors.mean(axis=0), rtol=1e-5, atol=1e-7
    )


def test_fully_masked_batch_is_skipped():
    layer = LocalFisher(update_every=10)
    inputs = np.ones((2, 3, 4), "float32")
    layer(inputs, training=True, mask=np.zeros((2, 3), bool))
    assert int(layer.skipped_batch_count.numpy()) == 1 and float(layer.statistics_weight.numpy()) == 0.0


def frozen_model(freeze, layer_class=LocalFisher):
    model = keras.Sequential(
        [keras.Input((6,)), layer_class(update_every=1), keras.layers.Dense(3)], name="inner"
    )
    if freeze == "layer":
        model.layers[0].trainable = False
    outer = keras.Sequential([keras.Input((6,)), model])
    if freeze == "model":
        model.trainable = False
    return outer, model.layers[0]


@pytest.mark.parametrize("freeze", ["layer", "model"])
@pytest.mark.parametrize("layer_class", [LocalFisher, FisherStatistics])
def test_frozen_layer_updates_nothing_in_fit(freeze, layer_class):
    outer, layer = frozen_model(freeze, layer_class)
    outer.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    outer.fit(rng.standard_normal((32, 6)), rng.standard_normal((32, 3)), batch_size=8, epochs=1, verbose=0)
    assert int(layer.step.numpy()) == 0 and int(layer.refresh_count.numpy()) == 0
    assert float(layer.statistics_weight.numpy()) == 0.0
    np.testing.assert_array_equal(layer.inverse_root.numpy(), np.eye(6, dtype="float32"))


def test_unfrozen_layer_updates_in_fit():
    outer, layer = frozen_model(None)
    outer.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    outer.fit(rng.standard_normal((32, 6)), rng.standard_normal((32, 3)), batch_size=8, epochs=1, verbose=0)
    assert int(layer.step.numpy()) == 4 and int(layer.refresh_count.numpy()) == 4
