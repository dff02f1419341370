"""End to end on real data: SNGD with `reconstruct`'s defaults on CNNs, a ResNet, an LSTM and a GRU (issue 8).

For each family (plain CNN, CNN with BatchNormalization, small pre-activation ResNet, LSTM over image
rows), SNGD (`keras_sngd.reconstruct(model)` trained with plain `SGD(lr)`) against plain SGD on the same
model at the same learning rate, seed, data order and number of steps, on the first Fashion-MNIST
training images. Before `keras_sngd.layer_defaults` these networks diverged or stalled at chance with
SNGD; the test fails if SNGD is not finite or does not end clearly below SGD. Deterministic: fixed seed,
`shuffle=False`, XLA-compiled CPU kernels (as in test_training_fashion_mnist.py).
"""

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import LocalFisher
from keras_sngd.datasets.idx import load_idx_directory
from keras_sngd.graph import walk_layers
from keras_sngd.models import REFERENCE_MODELS
from keras_sngd.models import deep_plain_cnn

SAMPLES, BATCH_SIZE, EPOCHS, LEARNING_RATE = 1024, 64, 2, 0.1


@pytest.fixture
def fashion_mnist_subset(fashion_mnist_directory):
    images, labels = load_idx_directory(fashion_mnist_directory, "train")
    return images[:SAMPLES].reshape(SAMPLES, 28, 28, 1).astype("float32") / 255.0, labels[:SAMPLES].astype("int32")


def gru_rows(input_shape, classes):
    """A GRU(32) over the image rows (not a reference model: a user's recurrent network)."""
    inputs = keras.Input(input_shape)
    rows = keras.layers.Reshape(input_shape[:2])(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.GRU(32)(rows)))


def train(name, sngd, data, **arguments):
    keras.utils.set_random_seed(0)
    build = gru_rows if name == "gru_rows" else REFERENCE_MODELS[name]
    model = build(input_shape=(28, 28, 1), classes=10)
    if sngd:
        model = keras_sngd.reconstruct(model, **arguments)
    model.compile(
        keras.optimizers.SGD(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = model.fit(*data, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0)
    return model, history.history["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain_cnn", "cnn_bn", "resnet_small", "lstm_rows", "gru_rows"])
def test_sngd_beats_sgd_on_family(name, fashion_mnist_subset):
    _, sgd_losses = train(name, False, fashion_mnist_subset)
    model, sngd_losses = train(name, True, fashion_mnist_subset)
    assert np.isfinite(sngd_losses).all(), sngd_losses
    assert sngd_losses[-1] < np.log(10.0), sngd_losses  # below chance
    assert sngd_losses[-1] < MARGIN[name] * sgd_losses[-1], (sngd_losses, sgd_losses)
    steps = EPOCHS * SAMPLES // BATCH_SIZE
    for _, layer in walk_layers(model):  # the LocalFishers inside a RecurrentWhitening too
        if isinstance(layer, LocalFisher):
            assert int(layer.step.numpy()) == steps
            assert int(layer.failed_refresh_count.numpy()) == 0


# The largest ratio of final losses SNGD / SGD each test accepts, about halfway between the ratio measured
# on this machine (0.87, 0.87, 0.78, 0.63, 0.73, from `train` above; the LSTM's was 0.68 before its
# recurrent state was whitened) and 1, so that other CPUs' rounding cannot flip it. Plain SGD at lr 0.1 is
# still near chance (1.87-2.30) after these 32 steps.
MARGIN = {"plain_cnn": 0.94, "cnn_bn": 0.94, "resnet_small": 0.89, "lstm_rows": 0.84, "gru_rows": 0.86}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm_rows", "gru_rows"])
def test_whitening_the_recurrent_state_beats_leaving_it_plain(name, fashion_mnist_subset):
    """`keras_sngd.RecurrentWhitening` (the default) against `recurrent_state=False`, same everything else:
    final losses 1.255 against 1.345 (LSTM) and 1.543 against 1.740 (GRU) on this machine; the test
    accepts a ratio halfway between those and 1."""
    model, whitened = train(name, True, fashion_mnist_subset)
    assert any(isinstance(layer, keras_sngd.RecurrentWhitening) for layer in model.layers)
    _, plain_state = train(name, True, fashion_mnist_subset, recurrent_state=False)
    assert np.isfinite(whitened).all(), whitened
    assert whitened[-1] < STATE_MARGIN[name] * plain_state[-1], (whitened, plain_state)


STATE_MARGIN = {"lstm_rows": 0.97, "gru_rows": 0.94}


def test_trust_radius_falls_with_the_depth_of_unnormalized_networks():
    from keras_sngd.layer_defaults import trust_radius
    from keras_sngd.layer_defaults import unnormalized_depth

    assert unnormalized_depth(deep_plain_cnn()) == 16
    assert trust_radius(deep_plain_cnn()) == pytest.approx(0.05 * (5 / 16) ** 2)
    vgg = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10)
    assert unnormalized_depth(vgg) == 16 and trust_radius(vgg) < 0.005
    for name in ["plain_cnn", "cnn_bn", "resnet_small", "lstm_rows"]:  # shallow or normalized: unchanged
        assert trust_radius(REFERENCE_MODELS[name](input_shape=(28, 28, 1), classes=10)) == 0.05
    model = keras_sngd.reconstruct(deep_plain_cnn())
    assert {layer.max_step for layer in model.layers if isinstance(layer, LocalFisher)} == {trust_radius(deep_plain_cnn())}


@pytest.mark.slow
def test_deep_plain_cnn_does_not_blow_up(fashion_mnist_subset):
    """16 parameterized layers, no normalization, lr 0.3: with one radius of 0.05 for every depth SNGD's
    epoch loss jumped to 27.6 right after the first refreshes (the layers' relative steps compound); with
    the depth-scaled radius it stays near or below chance and ends below plain SGD, which does not learn."""
    data = tuple(array[:256] for array in fashion_mnist_subset)
    losses = {}
    for sngd in (False, True):
        keras.utils.set_random_seed(0)
        model = deep_plain_cnn()
        if sngd:
            model = keras_sngd.reconstruct(model)
        model.compile(keras.optimizers.SGD(0.3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[sngd] = model.fit(*data, batch_size=32, epochs=5, shuffle=False, verbose=0).history["loss"]
    assert np.isfinite(losses[True]).all() and max(losses[True]) < 2.4, losses
    assert losses[True][-1] < losses[False][-1] - 0.05, losses


@pytest.mark.parametrize("arguments", [{"depth": 2}, {"depth": 0}, {"width": 0}, {"input_shape": (3, 3, 1)}])
def test_deep_plain_cnn_rejects_bad_arguments(arguments):
    with pytest.raises(ValueError, match=next(iter(arguments))):
        deep_plain_cnn(**arguments)
