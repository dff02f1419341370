"""End to end on real data: the paper's MLP (784-80-80-10, ReLU) on a Fashion-MNIST subset.

SNGD (a LocalFisher before each Dense, plain SGD) against plain SGD at the same learning rate, seed, data
order and number of steps. Deterministic: fixed seed (`keras.utils.set_random_seed`), `shuffle=False`,
the first 4096 training images, and XLA-compiled CPU kernels, so the losses repeat run after run on a
given machine (TensorFlow's `enable_op_determinism` is not used: it silently turns `jit_compile` off).
The margin is wide (measured 0.040 against 0.542, a factor 13, with `benchmarks/defaults_sweep.py`) so
that other CPUs' rounding cannot flip it.
"""


import keras
import numpy as np
import pytest

from keras_sngd import LocalFisher
from keras_sngd.datasets.idx import load_idx_directory

SAMPLES, BATCH_SIZE, EPOCHS, LEARNING_RATE = 4096, 64, 5, 0.1


@pytest.fixture(scope="module")
def fashion_mnist_subset(fashion_mnist_directory):
    images, labels = load_idx_directory(fashion_mnist_directory, "train")
    return images[:SAMPLES].reshape(SAMPLES, 784).astype("float32") / 255.0, labels[:SAMPLES].astype("int32")


def paper_mlp(sngd):
    layers = [keras.Input((784,))]
    for units, activation in [(80, "relu"), (80, "relu"), (10, None)]:
        if sngd:
            layers.append(LocalFisher())
        layers.append(keras.layers.Dense(units, activation=activation))
    return keras.Sequential(layers)


def train(sngd, data):
    keras.utils.set_random_seed(0)
    model = paper_mlp(sngd)
    model.compile(
        keras.optimizers.SGD(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    assert model.jit_compile
    history = model.fit(*data, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0)
    return model, history.history["loss"]


@pytest.mark.slow
def test_sngd_beats_sgd_at_same_learning_rate_and_steps(fashion_mnist_subset):
    _, sgd_losses = train(False, fashion_mnist_subset)
    model, sngd_losses = train(True, fashion_mnist_subset)
    assert np.isfinite(sngd_losses).all()
    # Clearly below: at most a quarter of SGD's final training loss (measured: 7%).
    assert sngd_losses[-1] < 0.25 * sgd_losses[-1], (sngd_losses, sgd_losses)
    steps = EPOCHS * SAMPLES // BATCH_SIZE
    for layer in model.layers:
        if isinstance(layer, LocalFisher):
            assert int(layer.step.numpy()) == steps
            # The first due refresh always runs; later ones only when U drifted (refresh_tolerance).
            assert 1 <= int(layer.refresh_count.numpy()) <= steps // layer.update_every
            assert int(layer.failed_refresh_count.numpy()) == 0


def train_wide(data, features_per_damping=None):
    """A 784-512-512-512-10 ReLU MLP through `reconstruct`, SGD 0.1, 2 epochs; the losses."""
    import keras_sngd

    keras.utils.set_random_seed(0)
    layers = [keras.Input((784,))] + [keras.layers.Dense(512, activation="relu") for _ in range(3)]
    model = keras_sngd.reconstruct(keras.Sequential(layers + [keras.layers.Dense(10)]))
    if features_per_damping is not None:
        assert [layer.damping for layer in model.layers if isinstance(layer, LocalFisher)][1:] == [
            512 / features_per_damping] * 3
    model.compile(keras.optimizers.SGD(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    return model.fit(*data, batch_size=BATCH_SIZE, epochs=2, shuffle=False, verbose=0).history["loss"]


@pytest.mark.slow
def test_reconstruct_damps_wide_dense_inputs_enough_to_train(fashion_mnist_subset, monkeypatch):
    """With the paper MLP's damping (0.01) on 512-wide hidden inputs the loss went above chance; with
    `width_damping` (512 / 8000 = 0.064) it trains. The negative control turns the rule off."""
    from keras_sngd import layer_defaults

    losses = train_wide(fashion_mnist_subset, features_per_damping=layer_defaults.FEATURES_PER_DAMPING)
    assert np.isfinite(losses).all() and losses[-1] < 0.7, losses
    monkeypatch.setattr(layer_defaults, "FEATURES_PER_DAMPING", 512 / 0.01)
    undamped = train_wide(fashion_mnist_subset)
    assert not (undamped[-1] < 0.7), undamped  # the control: without the rule it does not train
