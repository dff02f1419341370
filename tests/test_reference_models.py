"""The paper's reference networks (keras_sngd.models): shapes, sizes, and reconstruct on each of them."""

import re

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import LocalFisher
from keras_sngd.graph import walk_layers
from keras_sngd.models import REFERENCE_MODELS
from keras_sngd.models import lstm_language_model
from keras_sngd.models import paper_mlp
from keras_sngd.models import resnet18_cifar
from keras_sngd.models import small_cnn
from keras_sngd.models import vgg16_cifar
from keras_sngd.models.small_nets import cnn_bn
from keras_sngd.models.small_nets import lstm_rows
from keras_sngd.models.small_nets import plain_cnn
from keras_sngd.models.small_nets import resnet_small

VOCABULARY = 37
BATCH = 4


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (BATCH,) + shape).astype("float32")


def _tokens(length=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCABULARY, (BATCH, length)).astype("int32")


# name -> (builder, probe, expected output shape, expected LocalFisher count, expected skipped layer types)
SMALL_MODELS = {
    "mlp": (lambda: paper_mlp(), lambda: _images((28, 28, 1)), (BATCH, 10), 3, {}),
    "mlp_flat": (lambda: paper_mlp((784,), hidden_units=(32,), classes=5), lambda: _images((784,)), (BATCH, 5), 2, {}),
    "small_cnn": (lambda: small_cnn(), lambda: _images((28, 28, 1)), (BATCH, 10), 4, {}),
    # 13 convolutions + the Dense classifier; 13 BatchNormalization skipped.
    "vgg16": (lambda: vgg16_cifar(width=0.125), lambda: _images((32, 32, 3)), (BATCH, 10), 14,
              {"BatchNormalization": 13}),
    "vgg16_no_bn": (lambda: vgg16_cifar(classes=100, batch_norm=False, width=0.125), lambda: _images((32, 32, 3)),
                    (BATCH, 100), 14, {}),
    # 17 3x3 convolutions + 3 shortcut 1x1 convolutions + the Dense; 20 BatchNormalization skipped.
    "resnet18": (lambda: resnet18_cifar(width=0.125), lambda: _images((32, 32, 3)), (BATCH, 10), 21,
                 {"BatchNormalization": 20}),
    # Two per LSTM (its input, and its state: keras_sngd.RecurrentWhitening) + the output Dense; the Embedding
    # is skipped.
    "lstm": (lambda: lstm_language_model(VOCABULARY, units=16, embedding_dim=8), _tokens, (BATCH, 7, VOCABULARY), 5,
             {"Embedding": 1}),
    "lstm_3_dropout": (lambda: lstm_language_model(VOCABULARY, num_layers=3, units=12, embedding_dim=6, dropout=0.2),
                       _tokens, (BATCH, 7, VOCABULARY), 7, {"Embedding": 1}),
    "plain_cnn": (lambda: plain_cnn(), lambda: _images((28, 28, 1)), (BATCH, 10), 5, {}),
    "cnn_bn": (lambda: cnn_bn(), lambda: _images((28, 28, 1)), (BATCH, 10), 5, {"BatchNormalization": 1}),
    "resnet_small": (lambda: resnet_small(), lambda: _images((28, 28, 1)), (BATCH, 10), 7, {"BatchNormalization": 5}),
    "lstm_rows": (lambda: lstm_rows(classes=5), lambda: _images((28, 28, 1)), (BATCH, 5), 3, {}),
}


def test_registry():
    assert REFERENCE_MODELS == {
        "mlp": paper_mlp,
        "small_cnn": small_cnn,
        "vgg16": vgg16_cifar,
        "resnet18": resnet18_cifar,
        "lstm": lstm_language_model,
        "plain_cnn": plain_cnn,
        "cnn_bn": cnn_bn,
        "resnet_small": resnet_small,
        "lstm_rows": lstm_rows,
    }
    assert keras_sngd.models.REFERENCE_MODELS is REFERENCE_MODELS
    for function in REFERENCE_MODELS.values():
        assert "Args:" in function.__doc__ and "Defaults to" in function.__doc__


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_output_shape(name):
    builder, probe, shape, _, _ = SMALL_MODELS[name]
    model = builder()
    outputs = np.asarray(model(probe()))
    assert outputs.shape == shape
    assert np.all(np.isfinite(outputs))


def test_paper_mlp_architecture():
    model = paper_mlp()
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [80, 80, 10]
    assert [layer.kernel.shape[0] for layer in dense] == [784, 80, 80]
    assert dense[-1].activation is keras.activations.linear  # logits
    assert model.count_params() == 784 * 80 + 80 + 80 * 80 + 80 + 80 * 10 + 10


def test_vgg16_has_13_convolutions():
    for batch_norm in (True, False):
        model = vgg16_cifar(batch_norm=batch_norm, width=0.125)
        convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert len(convolutions) == 13
        assert [layer.filters for layer in convolutions] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
        assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 5
        batch_norms = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
        assert batch_norms == (13 if batch_norm else 0)
        assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [10]


def test_vgg16_full_width_parameter_count():
    model = vgg16_cifar()
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == 14_728_266
    assert model.count_params() == trainable + 2 * 4224  # BatchNorm moving mean and variance


def test_resnet18_full_width_parameter_count():
    model = resnet18_cifar()
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert abs(trainable - 11.17e6) / 11.17e6 < 0.01
    assert trainable == 11_173_962  # the pytorch-cifar ResNet18 count
    assert abs(model.count_params() - 11.17e6) / 11.17e6 < 0.01  # also with the 9,600 BatchNorm statistics
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 20
    assert sum(layer.kernel.shape[:2] == (1, 1) for layer in convolutions) == 3  # projection shortcuts
    assert [layer.filters for layer in convolutions if layer.strides == (2, 2)] == [128, 128, 256, 256, 512, 512]
    assert model.output.shape == (None, 10)


def test_lstm_language_model_variable_length():
    model = lstm_language_model(VOCABULARY, num_layers=1, units=8, embedding_dim=4)
    assert model.inputs[0].shape == (None, None)
    for length in (1, 5, 11):
        assert np.asarray(model(_tokens(length))).shape == (BATCH, length, VOCABULARY)
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    assert len(lstms) == 1 and lstms[0].return_sequences
    dropout = lstm_language_model(VOCABULARY, num_layers=2, units=8, embedding_dim=4, dropout=0.5)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in dropout.layers) == 3


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_reconstruct_and_train(name):
    builder, probe, _, inserted, skipped = SMALL_MODELS[name]
    model = builder()
    inputs = probe()
    expected = np.asarray(model(inputs))

    sngd, report = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 1}, return_report=True)
    assert len(report.inserted) == inserted
    counts = {}
    for _, kind, _ in report.skipped:
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == skipped
    fishers = [layer for _, layer in walk_layers(sngd) if isinstance(layer, LocalFisher)]
    assert len(fishers) == inserted
    np.testing.assert_array_equal(np.asarray(sngd(inputs)), expected)

    sngd.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    targets = np.random.default_rng(1).integers(0, expected.shape[-1], expected.shape[:-1])
    before = [np.array(weight) for weight in sngd.trainable_weights]
    loss = sngd.train_on_batch(inputs, targets)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, sngd.trainable_weights))
    assert all(int(fisher.step.numpy()) == 1 for fisher in fishers)
    # update_every=1: the step also refreshed every U, re-expressing its consumer's kernel.
    assert all(int(fisher.refresh_count.numpy()) == 1 for fisher in fishers)
    assert all(int(fisher.failed_refresh_count.numpy()) == 0 for fisher in fishers)
    assert all(fisher.refresh_mode.kind == "function-preserving" for fisher in fishers)
    assert np.all(np.isfinite(np.asarray(sngd(inputs))))


@pytest.mark.parametrize(
    "builder, arguments, argument",
    [
        (paper_mlp, {"input_shape": (28, 0, 1)}, "input_shape"),
        (paper_mlp, {"input_shape": 784}, "input_shape"),
        (paper_mlp, {"hidden_units": (80, 0)}, "hidden_units"),
        (paper_mlp, {"hidden_units": 80}, "hidden_units"),
        (paper_mlp, {"classes": 0}, "classes"),
        (paper_mlp, {"classes": 2.5}, "classes"),
        (paper_mlp, {"activation": "no_such_activation"}, "activation"),
        (paper_mlp, {"activation": None}, "activation"),
        (paper_mlp, {"name": ""}, "name"),
        (small_cnn, {"input_shape": (28, 28)}, "input_shape"),
        (small_cnn, {"input_shape": (8, 8, 1)}, "input_shape"),
        (small_cnn, {"classes": -1}, "classes"),
        (vgg16_cifar, {"input_shape": (16, 16, 3)}, "input_shape"),
        (vgg16_cifar, {"classes": True}, "classes"),
        (vgg16_cifar, {"batch_norm": 1}, "batch_norm"),
        (vgg16_cifar, {"width": 0}, "width"),
        (vgg16_cifar, {"width": float("nan")}, "width"),
        (resnet18_cifar, {"input_shape": (32, 32)}, "input_shape"),
        (resnet18_cifar, {"classes": 0}, "classes"),
        (resnet18_cifar, {"width": -0.5}, "width"),
        (resnet18_cifar, {"name": 3}, "name"),
        (lstm_language_model, {"vocabulary_size": 1}, "vocabulary_size"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "num_layers": 0}, "num_layers"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "num_layers": 4}, "num_layers"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "units": 0}, "units"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "embedding_dim": 1.5}, "embedding_dim"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "dropout": 1.0}, "dropout"),
        (lstm_language_model, {"vocabulary_size": VOCABULARY, "dropout": -0.1}, "dropout"),
        (plain_cnn, {"input_shape": (28, 28)}, "input_shape"),
        (cnn_bn, {"input_shape": (1, 28, 1)}, "input_shape"),
        (resnet_small, {"classes": 0}, "classes"),
        (lstm_rows, {"input_shape": (28,)}, "input_shape"),
        (lstm_rows, {"units": 0}, "units"),
        (lstm_rows, {"name": ""}, "name"),
    ],
)
def test_bad_arguments(builder, arguments, argument):
    with pytest.raises(ValueError, match=re.escape(f"Received: {argument}={arguments[argument]!r}")) as caught:
        builder(**arguments)
    assert str(caught.value).startswith(f"`{argument}`")
