"""`reconstruct` whitens the input of wrapped layers (`Bidirectional`, `TimeDistributed`) and of
cell-based recurrent layers (`RNN(cell)`, stacked cells, `ConvLSTM2D`), on every backend
(`scripts/wrappers_check.py`, in subprocesses)."""

import os

import keras
import pytest

import keras_sngd
from keras_sngd.binding import bindings_for
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "wrappers_check.py")
L = keras.layers


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_wrapped_and_cell_based_layers_train_refresh_and_fold(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    # Every model ran; the channels_first convolution only where the backend runs one at all
    # (tests.inputs.channels_first_convolutions_run: not TensorFlow on a CPU without oneDNN).
    expected = {"bidirectional_gru", "bidirectional_lstm_sum", "time_distributed_dense",
                "time_distributed_bidirectional", "rnn_stacked_cells", "conv_lstm_2d"}
    if report["channels_first_runs"]:
        expected.add("time_distributed_conv_channels_first")
    assert set(report["models"]) == expected
    for name, result in report["models"].items():
        # The wrapped layer and the Dense after it each get one LocalFisher, and each direction of a
        # Bidirectional RNN one on its recurrent state (keras_sngd.RecurrentWhitening).
        states = [path for path in result["inserted"] if "/state" in path]
        assert len(result["inserted"]) - len(states) == 2, (name, result)
        assert len(states) == (2 if name.startswith("bidirectional") else 0), (name, result)
        if name in ("rnn_stacked_cells", "time_distributed_bidirectional"):
            assert any(path.endswith("/state") for path in result["skipped"]), (name, result)
        assert result["same_at_start"] == 0.0, (name, result)
        assert all(count >= 1 for count in result["refreshes"]), (name, result)
        assert result["relative_change"] < 1e-4, (name, result)
        assert result["losses"][-1] < result["losses"][0], (name, result)
        assert result["fold_error"] < 1e-4 and not result["folded_has_local_fisher"], (name, result)
        assert result["load_error"] < 1e-5, (name, result)


def test_bindings_of_wrappers():
    bidirectional = L.Bidirectional(L.GRU(8))
    bidirectional.build((None, 5, 6))
    forward, backward = bindings_for(bidirectional)[0]
    assert (forward.part, backward.part) == (0, 1) and forward.layer is backward.layer is bidirectional
    assert forward.kernel is bidirectional.forward_layer.cell.kernel
    assert backward.kernel is bidirectional.backward_layer.cell.kernel
    assert backward.name == f"{bidirectional.name}_backward"
    # A TimeDistributed layer's input has a time axis: a feature axis counted from the front moves by one.
    distributed = L.TimeDistributed(L.Conv2D(4, 3, data_format="channels_first"))
    distributed.build((None, 3, 2, 6, 6))
    (binding,), _ = bindings_for(distributed)
    assert binding.feature_axis == 2 and binding.kernel is distributed.layer.kernel
    # Nested wrappers keep both directions.
    nested = L.TimeDistributed(L.Bidirectional(L.LSTM(4)))
    nested.build((None, 3, 5, 6))
    parts, _ = bindings_for(nested)
    assert [binding.part for binding in parts] == [0, 1] and all(binding.layer is nested for binding in parts)
    assert len({id(binding.kernel) for binding in parts}) == 2
    # An RNN with a cell of unknown structure is skipped, with the reason.
    model = keras.Sequential([keras.Input((5, 6)), L.RNN(_CustomCell(4)), L.Dense(3)])
    _, report = keras_sngd.reconstruct(model, return_report=True)
    assert [entry[1] for entry in report.skipped] == ["RNN"]
    assert "only LSTMCell, GRUCell and SimpleRNNCell" in report.skipped[0][2]
    # A spectrally normalized layer is left plain, with the reason: its wrapper would normalize W', not W.
    model = keras.Sequential([keras.Input((6,)), L.SpectralNormalization(L.Dense(5)), L.Dense(3)])
    copy, report = keras_sngd.reconstruct(model, return_report=True)
    assert [entry[0] for entry in report.inserted] == [model.layers[1].name]
    assert [entry[1] for entry in report.skipped] == ["SpectralNormalization"]
    assert "SpectralNormalization divides its Dense's kernel" in report.skipped[0][2]
    probe = keras.random.normal((4, 6), seed=1)
    assert float(keras.ops.max(keras.ops.abs(copy(probe) - model(probe)))) == 0.0
    # A wrapper of an unsupported layer says why.
    model = keras.Sequential([keras.Input((5, 6, 4)), L.TimeDistributed(L.DepthwiseConv1D(3)), L.Flatten(), L.Dense(3)])
    _, report = keras_sngd.reconstruct(model, return_report=True)
    assert report.skipped[0][1] == "TimeDistributed" and "wrapped DepthwiseConv1D" in report.skipped[0][2]


@keras.saving.register_keras_serializable(package="test_wrappers")
class _CustomCell(L.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size = units, units

    def get_config(self):
        return dict(super().get_config(), units=self.units)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs, states):
        output = keras.ops.matmul(inputs, self.kernel) + states[0]
        return output, [output]
