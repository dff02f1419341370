"""LocalFishers on the state a recurrent kernel reads (`keras_sngd.RecurrentWhitening`): LSTM, GRU,
SimpleRNN, Bidirectional, masks, stacked layers, Sequential. On every backend
(`scripts/recurrent_whitening_check.py`, in subprocesses), and the rules and the math in-process."""

import os

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import LocalFisher
from keras_sngd import RecurrentWhitening
from keras_sngd.binding import bindings_for
from keras_sngd.graph import walk_layers
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "recurrent_whitening_check.py")
L = keras.layers


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_recurrent_layers_train_refresh_fold_and_load(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    for name, result in report["models"].items():
        fishers = result["state_local_fishers"]
        assert len(fishers) == result["expected"], (name, fishers)
        assert set(fishers) <= set(result["inserted"]), (name, result["inserted"])
        # Exact on TensorFlow and JAX. On PyTorch a kernel from Keras's orthogonal initializer is stored
        # transposed (strides (1, n)), and `h @ R` reads it in another order than the contiguous `U_h R'`
        # (with U_h = I, the same values): the outputs differ in the last bit (1.2e-7 measured).
        assert result["same_at_start"] <= (1e-6 if backend == "torch" else 0.0), (name, result["same_at_start"])
        assert result["steps"] == [24] * len(fishers), (name, result["steps"])  # one call per training step
        assert all(count >= 1 for count in result["refreshes"]), (name, result["refreshes"])
        assert result["failed_refreshes"] == [0] * len(fishers), name
        assert min(result["inverse_root_moved"]) > 1e-2, (name, result["inverse_root_moved"])  # U_h is not I
        # Only the refreshes changed weights (SGD(0)): each re-expressed R' so that U_h R' did not move.
        assert result["relative_change"] < 1e-4, (name, result["relative_change"])
        losses = result["losses"]
        assert np.isfinite(losses).all() and losses[-1] < losses[0], (name, losses)
        assert result["fold_error"] < 1e-4 and result["folded_plain"], name
        assert result["folded_load_error"] < 1e-5, name
        assert result["load_error"] == 0.0 and result["loaded_state_equal"], name
        assert np.isfinite(result["loaded_losses"]).all(), name


def gru_model(units=6, **kwargs):
    inputs = keras.Input((7, 4))
    return keras.Model(inputs, L.Dense(3, name="logits")(L.GRU(units, name="gru", **kwargs)(inputs)))


def test_reconstruct_wraps_the_recurrent_layer_under_its_name_and_reports_the_state():
    sngd, report = keras_sngd.reconstruct(gru_model(), return_report=True)
    wrapper = sngd.get_layer("gru")
    assert isinstance(wrapper, RecurrentWhitening) and isinstance(wrapper.layer, L.GRU)
    inserted = {entry[0]: entry for entry in report.inserted}
    assert inserted["gru/state"][2] == "gru_state_local_fisher" and inserted["gru/state"][3] == 6
    assert inserted["gru"][3] == 4  # the input's LocalFisher, as before
    assert any("R = U_h R'" in note for name, note in report.notes if name == "gru_state_local_fisher")
    names = [layer.name for _, layer in walk_layers(sngd) if isinstance(layer, LocalFisher)]
    assert "gru_state_local_fisher" in names
    # The LocalFisher before the wrapper re-expresses the RNN's input kernel, through the wrapper.
    (binding,) = bindings_for(wrapper)[0]
    assert binding.layer is wrapper and binding.kernel is wrapper.layer.cell.kernel
    assert "the state h_(t-1) read by the recurrent kernel of 'gru'" in wrapper.describe()


def test_the_state_statistics_are_the_previous_states_of_the_batch():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 4))
    plain = keras.Model(inputs, L.Dense(3)(L.GRU(6, name="gru")(L.Masking()(inputs))))
    sngd = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 1000})
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 7, 4)).astype("float32")
    mask = np.ones((16, 7), bool)
    mask[:5, 4:] = False  # padded steps: their h_(t-1) is not read
    features[~mask] = 0.0
    sngd.compile(keras.optimizers.SGD(0.0), "mse")
    sngd.train_on_batch(features, np.zeros((16, 3), "float32"))
    fisher = sngd.get_layer("gru").fishers[0]
    # The states the layer computed: h_1..h_T of the plain GRU (equal to the SNGD copy's before any step).
    sequence_layer = L.GRU(6, return_sequences=True)
    sequence_model = keras.Model(inputs, sequence_layer(L.Masking()(inputs)))
    sequence_layer.set_weights(plain.get_layer("gru").get_weights())
    states = keras.ops.convert_to_numpy(sequence_model(features))
    previous = np.concatenate([np.zeros((16, 1, 6), "float32"), states[:, :-1]], axis=1)
    rows = previous[mask]
    expected = rows.T @ rows / len(rows)
    second = keras.ops.convert_to_numpy(fisher.second_moment) / float(keras.ops.convert_to_numpy(fisher.statistics_weight))
    np.testing.assert_allclose(second, expected, rtol=1e-4, atol=1e-6)
    every = previous.reshape(-1, 6)
    assert not np.allclose(second, every.T @ every / len(every), rtol=1e-2)  # the mask counted


def test_the_recurrent_kernel_takes_the_natural_gradient_step():
    """With `R = U R'`, the gradient on `R'` is `U^T grad_R` (grad_R the plain layer's), so SGD's step on
    `R` is `U U^T grad_R = G_d^-1 grad_R` (Proposition 1, for the recurrent kernel)."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape; the backends' steps are checked by the script above")
    keras.utils.set_random_seed(0)
    sngd = keras_sngd.reconstruct(gru_model(), recurrent_state=True)
    wrapper = sngd.get_layer("gru")
    fisher = wrapper.fishers[0]
    rng = np.random.default_rng(1)
    u = np.eye(6, dtype="float32") + 0.3 * rng.normal(size=(6, 6)).astype("float32")
    fisher.inverse_root.assign(u)
    plain = keras_sngd.fold(sngd)
    x = rng.normal(size=(8, 7, 4)).astype("float32")
    kernel, plain_kernel = wrapper.layer.cell.recurrent_kernel, plain.get_layer("gru").cell.recurrent_kernel
    np.testing.assert_allclose(plain_kernel.numpy(), u @ kernel.numpy(), rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sngd(x, training=False) ** 2)
    grad_whitened = tape.gradient(loss, kernel.value).numpy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(plain(x, training=False) ** 2)
    grad_plain = tape.gradient(loss, plain_kernel.value).numpy()
    np.testing.assert_allclose(grad_whitened, u.T @ grad_plain, rtol=1e-4, atol=1e-6)


def test_what_is_not_whitened_and_why():
    inputs = keras.Input((7, 4))
    stacked = L.RNN(L.StackedRNNCells([L.GRUCell(5), L.GRUCell(4)]), name="stacked")(inputs)
    constrained = L.GRU(4, recurrent_constraint=keras.constraints.MaxNorm(2.0), name="constrained")(inputs)
    frozen_layer = L.LSTM(4, name="frozen")
    frozen = frozen_layer(inputs)
    conv_lstm = L.Flatten()(L.ConvLSTM1D(2, 3, name="conv_lstm")(L.Reshape((7, 4, 1))(inputs)))
    outputs = L.Dense(2)(L.Concatenate()([stacked, constrained, frozen, conv_lstm]))
    frozen_layer.trainable = False
    model = keras.Model(inputs, outputs)
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    skipped = {path: reason for path, _, reason in report.skipped}
    assert "stacked cells" in skipped["stacked/state"]
    assert "constraint" in skipped["constrained/state"]
    assert "frozen" in skipped["frozen"]  # the layer itself, and so its state
    # An encoder read only through its states is whitened (its hand-over rides on the states too;
    # `scripts/recurrent_whitening_check.py`'s seq2seq trains it).
    encoder_inputs = keras.Input((5, 3))
    _, h, c = L.LSTM(4, return_state=True, name="encoder")(encoder_inputs)
    encoder, seq2seq = keras_sngd.reconstruct(keras.Model(encoder_inputs, h), return_report=True)
    assert "encoder/state" in [entry[0] for entry in seq2seq.inserted]
    assert isinstance(encoder.get_layer("encoder"), RecurrentWhitening)
    assert "encoder/state" not in dict((path, reason) for path, _, reason in seq2seq.skipped)
    assert not any(isinstance(layer, RecurrentWhitening) for layer in sngd.layers)
    assert not any(path.startswith("conv_lstm/") for path in skipped)  # ConvLSTM: its input kernel only


def test_switches_layer_types_exclude_and_statistics_class():
    def wrappers(model):
        return [layer for layer in model.layers if isinstance(layer, RecurrentWhitening)]

    assert not wrappers(keras_sngd.reconstruct(gru_model(), recurrent_state=False))
    assert not wrappers(keras_sngd.reconstruct(gru_model(), layer_types=(L.Dense,)))
    assert not wrappers(keras_sngd.reconstruct(gru_model(), exclude=["gru"]))
    assert len(wrappers(keras_sngd.reconstruct(gru_model(), layer_types=(L.GRU,)))) == 1
    assert not wrappers(keras_sngd.reconstruct(gru_model(), layer_class=keras_sngd.FisherStatistics))
    sngd = keras_sngd.reconstruct(gru_model(), per_layer_arguments={"gru": {"damping": 0.5}})
    assert sngd.get_layer("gru").fishers[0].damping == 0.5
    # Reconstructing the SNGD model again inserts nothing and keeps the wrapper.
    again, report = keras_sngd.reconstruct(sngd, return_report=True)
    assert not report.inserted and len(wrappers(again)) == 1
    with pytest.raises(ValueError, match="recurrent_state"):
        keras_sngd.reconstruct(gru_model(), recurrent_state="yes")


def test_wrapper_arguments_are_checked():
    with pytest.raises(ValueError, match="`layer` must be"):
        RecurrentWhitening(L.Dense(3))
    with pytest.raises(ValueError, match="stacked cells"):
        RecurrentWhitening(L.RNN(L.StackedRNNCells([L.GRUCell(3), L.GRUCell(3)])))
    with pytest.raises(ValueError, match="`fishers` must be a list of 2"):
        RecurrentWhitening(L.Bidirectional(L.GRU(3)), fishers=[{}])


def test_inference_uses_the_effective_kernel_without_statistics():
    sngd = keras_sngd.reconstruct(gru_model())
    fisher = sngd.get_layer("gru").fishers[0]
    x = np.random.default_rng(0).normal(size=(4, 7, 4)).astype("float32")
    sngd.predict(x, verbose=0)
    sngd(x, training=False)
    assert int(keras.ops.convert_to_numpy(fisher.step)) == 0
