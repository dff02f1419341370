"""LocalFishers before wrapped and cell-based recurrent layers, on the backend of `KERAS_BACKEND`
(`tests/test_wrappers.py`). Prints a JSON report as its last line.

For each model: `reconstruct` inserts a LocalFisher before the layer; through SGD(0.0) only the refreshes
change weights, so the outputs must not move (a Bidirectional layer's refresh re-expresses both
directions' input kernels: re-expressing one would move them); then real training lowers the loss,
`fold` gives the trained function, and a `.keras` file reloads it.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd
from keras_sngd.graph import walk_layers
from tests.inputs import channels_first_convolutions_run

L = keras.layers


def models(channels_first_runs):
    yield "bidirectional_gru", (5, 6), [L.Bidirectional(L.GRU(8)), L.Dense(3)]
    yield "bidirectional_lstm_sum", (5, 6), [L.Bidirectional(L.LSTM(8, return_sequences=True), merge_mode="sum"),
                                             L.GlobalAveragePooling1D(), L.Dense(3)]
    yield "time_distributed_dense", (5, 6), [L.TimeDistributed(L.Dense(4, activation="relu")), L.Flatten(), L.Dense(3)]
    if channels_first_runs:
        yield "time_distributed_conv_channels_first", (3, 2, 6, 6), [
            L.TimeDistributed(L.Conv2D(4, 3, data_format="channels_first")), L.Flatten(), L.Dense(3)]
    yield "time_distributed_bidirectional", (3, 5, 6), [L.TimeDistributed(L.Bidirectional(L.LSTM(4))), L.Flatten(),
                                                         L.Dense(3)]
    yield "rnn_stacked_cells", (5, 6), [L.RNN([L.LSTMCell(8), L.SimpleRNNCell(4)]), L.Dense(3)]
    yield "conv_lstm_2d", (3, 6, 6, 2), [L.ConvLSTM2D(4, 3), L.Flatten(), L.Dense(3)]


def check(name, shape, layers, rng):
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input(shape)] + layers, name=name)
    features = rng.normal(size=(128,) + shape).astype("float32")
    labels = rng.integers(0, 3, 128)
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    probe = features[:16]
    before = keras.ops.convert_to_numpy(model(probe))
    same_at_start = float(np.max(np.abs(before - keras.ops.convert_to_numpy(plain(probe)))))
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(features, labels, batch_size=16, epochs=3, verbose=0)
    after = keras.ops.convert_to_numpy(model(probe))
    # The LocalFishers on recurrent states too (inside keras_sngd.RecurrentWhitening).
    fishers = [layer for _, layer in walk_layers(model) if isinstance(layer, keras_sngd.LocalFisher)]
    refreshes = [int(keras.ops.convert_to_numpy(layer.refresh_count)) for layer in fishers]
    # Then train: the same compiled step at a learning rate of 0.05 (the rate is an optimizer variable),
    # not a second compile, whose trace and XLA compilation per model made most of this script's time.
    model.optimizer.learning_rate = 0.05
    losses = model.fit(features, labels, batch_size=16, epochs=4, verbose=0).history["loss"]
    trained = keras.ops.convert_to_numpy(model(probe))
    folded = keras_sngd.fold(model)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    return {
        "inserted": [entry[0] for entry in report.inserted],
        "skipped": [entry[0] for entry in report.skipped],
        "same_at_start": same_at_start,
        "refreshes": refreshes,
        "relative_change": float(np.max(np.abs(after - before)) / np.max(np.abs(before))),
        "losses": [float(loss) for loss in losses],
        "fold_error": float(np.max(np.abs(keras.ops.convert_to_numpy(folded(probe)) - trained)) / np.max(np.abs(trained))),
        "folded_has_local_fisher": any(isinstance(layer, keras_sngd.LocalFisher) for layer in folded.layers),
        "load_error": float(np.max(np.abs(keras.ops.convert_to_numpy(loaded(probe)) - trained))),
    }


def main():
    rng = np.random.default_rng(0)
    # TensorFlow without oneDNN cannot run a plain channels_first Conv2D on a CPU (tests.inputs).
    channels_first_runs = channels_first_convolutions_run()
    results = {name: check(name, shape, layers, rng) for name, shape, layers in models(channels_first_runs)}
    print(json.dumps({"backend": keras.backend.backend(), "models": results,
                      "channels_first_runs": channels_first_runs}))


if __name__ == "__main__":
    main()
