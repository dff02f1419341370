"""A refresh re-expresses the consumers' weights: with learning rate 0 the outputs do not move."""

import warnings

import keras
import numpy as np
import pytest

from keras_sngd import LocalFisher
from tests.inputs import CHANNELS_FIRST_UNSUPPORTED
from tests.inputs import channels_first_convolutions_run


def inputs_for(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * rng.uniform(0.2, 3.0, shape[-1]) + 0.7).astype("float32")


CONSUMERS = {
    "dense": ((12,), lambda: keras.layers.Dense(5, activation="tanh"), -1),
    "dense_3d": ((4, 12), lambda: keras.layers.Dense(5), -1),
    "conv1d": ((9, 6), lambda: keras.layers.Conv1D(4, 3), -1),
    "conv2d_valid": ((7, 7, 6), lambda: keras.layers.Conv2D(4, 3), -1),
    "conv2d_same": ((7, 7, 6), lambda: keras.layers.Conv2D(4, 3, padding="same", strides=2), -1),
    "conv2d_channels_first": ((6, 7, 7), lambda: keras.layers.Conv2D(4, 3, data_format="channels_first"), 1),
    "conv3d": ((4, 4, 4, 5), lambda: keras.layers.Conv3D(3, 2), -1),
    "conv2d_transpose": ((5, 5, 6), lambda: keras.layers.Conv2DTranspose(4, 3, strides=2), -1),
    "lstm": ((6, 8), lambda: keras.layers.LSTM(5, return_sequences=True), -1),
    "gru": ((6, 8), lambda: keras.layers.GRU(5), -1),
    "gru_v1": ((6, 8), lambda: keras.layers.GRU(5, reset_after=False), -1),
    "simple_rnn": ((6, 8), lambda: keras.layers.SimpleRNN(5), -1),
    "einsum_dense": ((4, 8), lambda: keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 5), bias_axes="d"), -1),
}
CENTERABLE = {"dense", "dense_3d", "conv1d", "conv2d_valid", "conv2d_channels_first", "conv3d", "lstm", "gru", "gru_v1",
              "simple_rnn", "einsum_dense"}  # EinsumDense: a (features, units) kernel with a bias on its units


def refresh_once(name, center):
    if "channels_first" in name and not channels_first_convolutions_run():
        pytest.skip(CHANNELS_FIRST_UNSUPPORTED)
    shape, make, axis = CONSUMERS[name]
    local_fisher = LocalFisher(axis=axis, update_every=3, center=center, damping=1e-2)
    model = keras.Sequential([keras.Input(shape), local_fisher, make()])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    batches = [inputs_for((16,) + shape, seed) for seed in range(3)]
    targets = np.zeros_like(np.asarray(model(batches[0])))
    for batch in batches[:2]:
        model.train_on_batch(batch, targets)  # statistics, no refresh yet (lr 0: weights unchanged)
    probe = inputs_for((8,) + shape, seed=10)
    before = np.asarray(model(probe))
    kernel_before = np.array(model.layers[1].weights[0].numpy())
    model.train_on_batch(batches[2], targets)  # the refresh step
    assert int(local_fisher.refresh_count.numpy()) == 1
    return model, before, np.asarray(model(probe)), kernel_before


@pytest.mark.parametrize("name", sorted(CONSUMERS))
def test_refresh_keeps_outputs(name):
    model, before, after, kernel_before = refresh_once(name, center=False)
    local_fisher = model.layers[0]
    assert local_fisher.refresh_mode.kind == "function-preserving", local_fisher.refresh_mode
    assert not np.allclose(local_fisher.inverse_root.numpy(), np.eye(local_fisher.inverse_root.shape[0]))
    assert not np.allclose(model.layers[1].weights[0].numpy(), kernel_before)  # the kernel was re-expressed
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


@pytest.mark.parametrize("name", sorted(CENTERABLE))
def test_centered_refresh_keeps_outputs(name):
    model, before, after, _ = refresh_once(name, center=True)
    assert model.layers[0].refresh_mode.kind == "function-preserving"
    assert np.abs(model.layers[0].shift.numpy()).max() > 0.1
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    # `fold` absorbs the shift into the bias: the plain consumer alone, the same function.
    from keras_sngd import fold

    folded = fold(model)
    assert [type(layer) for layer in folded.layers] == [type(model.layers[1])]
    probe = inputs_for((8,) + CONSUMERS[name][0], seed=10)
    np.testing.assert_allclose(np.asarray(folded(probe)), after, rtol=1e-4, atol=1e-4 * np.abs(after).max())


def test_centered_same_padding_is_exact_only_inside():
    """Centering before a `same`-padded convolution is not exactly foldable at the borders, and says so."""
    with pytest.warns(UserWarning, match="exactly only away from the borders"):
        model, before, after, _ = refresh_once("conv2d_same", center=True)
    assert "away from the borders" in model.layers[0].refresh_mode.reason
    difference = np.abs(after - before)
    # Output 4x4 (stride 2) on a 7x7 input: rows/columns 1..2 see no padding, 0 and 3 do.
    assert difference[:, 1:3, 1:3].max() < 1e-4 * np.abs(before).max()
    assert difference.max() > 1e-3 * np.abs(before).max()


def test_replacing_refresh_moves_outputs_and_says_so():
    shape, make, axis = CONSUMERS["dense"]
    local_fisher = LocalFisher(update_every=1, preserve_function=False)
    model = keras.Sequential([keras.Input(shape), local_fisher, make()])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    probe = inputs_for((8,) + shape, seed=10)
    before = np.asarray(model(probe))
    model.train_on_batch(inputs_for((16,) + shape), np.zeros((16, 5), "float32"))
    assert local_fisher.refresh_mode == ("replacing", "preserve_function=False")
    assert not np.allclose(np.asarray(model(probe)), before, atol=1e-2)


def test_unbindable_consumer_falls_back_with_a_warning():
    inputs = keras.Input((6, 6, 4))
    local_fisher = LocalFisher(update_every=1)
    outputs = keras.layers.DepthwiseConv2D(3)(local_fisher(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train_on_batch(inputs_for((4, 6, 6, 4)), np.zeros((4, 4, 4, 4), "float32"))
    assert local_fisher.refresh_mode.kind == "replacing" and "DepthwiseConv2D" in local_fisher.refresh_mode.reason
    assert any("cannot keep the model's function" in str(w.message) for w in caught)


def test_failed_refresh_leaves_consumer_untouched():
    shape, make, axis = CONSUMERS["dense"]
    local_fisher = LocalFisher(update_every=1, iterations=1)
    model = keras.Sequential([keras.Input(shape), local_fisher, make()])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    kernel = np.array(model.layers[1].kernel.numpy())
    model.train_on_batch(inputs_for((16,) + shape), np.zeros((16, 5), "float32"))
    assert int(local_fisher.failed_refresh_count.numpy()) == 1
    np.testing.assert_array_equal(model.layers[1].kernel.numpy(), kernel)


def test_shared_local_fisher_feeding_two_layers():
    inputs = keras.Input((10,))
    local_fisher = LocalFisher(update_every=2)
    whitened = local_fisher(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3)(whitened), keras.layers.Dense(4)(whitened)])
    model.compile(keras.optimizers.SGD(0.0), ["mse", "mse"])
    probe = inputs_for((8, 10), seed=5)
    before = [np.asarray(o) for o in model(probe)]
    for seed in range(2):
        model.train_on_batch(inputs_for((16, 10), seed), [np.zeros((16, 3)), np.zeros((16, 4))])
    assert local_fisher.refresh_mode.kind == "function-preserving"
    assert "'dense'" in local_fisher.refresh_mode.reason and "'dense_1'" in local_fisher.refresh_mode.reason
    for old, new in zip(before, model(probe)):
        np.testing.assert_allclose(np.asarray(new), old, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("optimizer", ["Muon", "Adam"])
def test_other_keras_optimizers_train_the_reconstruction_through_refreshes(optimizer):
    # The reconstruction is an ordinary Keras model: at learning rate 0 a refresh keeps its function whatever
    # optimizer steps the whitened kernels (Muon orthogonalizes their momentum, Adam steps the biases).
    import keras_sngd
    from keras_sngd.models import paper_mlp

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((256, 784)).astype("float32")
    y = rng.integers(0, 10, 256)
    model = keras_sngd.reconstruct(paper_mlp(input_shape=(784,)),
                                   local_fisher_arguments={"update_every": 4, "refresh_tolerance": 0.0})
    model.compile(getattr(keras.optimizers, optimizer)(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.predict(x, verbose=0)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    fishers = [layer for layer in model.layers if isinstance(layer, LocalFisher)]
    assert [int(layer.refresh_count.numpy()) for layer in fishers] == [2, 2, 2]
    change = np.abs(model.predict(x, verbose=0) - before).max() / np.abs(before).max()
    assert change < 1e-4, change
    # And at a learning rate it trains.
    model.compile(getattr(keras.optimizers, optimizer)(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("shape, make", [
    ((12,), lambda: keras.layers.Dense(5, use_bias=False)),
    ((12,), lambda: keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 3), bias_axes="cd")),
    ((4, 12), lambda: keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 5))),
], ids=["dense_without_bias", "einsum_kernel_with_two_output_axes", "einsum_without_bias"])
def test_a_centered_layer_whose_consumer_cannot_absorb_the_shift_replaces_and_says_why(shape, make):
    """A consumer whose bias cannot hold `contract(K, mu)` cannot take the centered refresh: it falls back
    to the replacing refresh with a warning (it used to fail inside the refresh's conditional on
    TensorFlow, `None.assign`, and move the outputs silently on JAX), and `fold` still gives the trained
    function (the shift as a Normalization layer, `U` as a Dense mixing)."""
    from keras_sngd import fold

    local_fisher = LocalFisher(update_every=2, center=True, damping=1e-2)
    model = keras.Sequential([keras.Input(shape), local_fisher, make()])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    targets = np.zeros_like(np.asarray(model(inputs_for((16,) + shape))))
    with pytest.warns(UserWarning, match="cannot keep the model's function"):
        for seed in range(4):
            model.train_on_batch(inputs_for((16,) + shape, seed), targets)
    assert local_fisher.refresh_mode.kind == "replacing"
    assert "center=True, but" in local_fisher.refresh_mode.reason
    assert int(local_fisher.refresh_count.numpy()) >= 1 and np.abs(local_fisher.shift.numpy()).max() > 0.1
    probe = inputs_for((8,) + shape, seed=10)
    expected = np.asarray(model(probe))
    np.testing.assert_allclose(np.asarray(fold(model)(probe)), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
