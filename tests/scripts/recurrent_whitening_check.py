"""LocalFishers on the recurrent state (`keras_sngd.RecurrentWhitening`), on the backend of `KERAS_BACKEND`
(`tests/test_recurrent_whitening.py`). Prints a JSON report as its last line.

For each model: `reconstruct` wraps each recurrent layer and puts a LocalFisher on the state its recurrent
kernel reads; through SGD(0.0) only the refreshes change weights, so the outputs must not move (each refresh
re-expresses the recurrent kernel, `R'_new = M R'_old`); then real training lowers the loss, `fold` gives
the trained function back with plain layers, and a `.keras` file reloads it.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd

L = keras.layers


def gru(inputs):
    return L.Dense(3, name="logits")(L.GRU(8, name="gru")(inputs))


def lstm_masked(inputs):
    # Zero-padded sequences: the mask weights the state statistics; two stacked layers, the first returning
    # sequences and its state.
    x = L.Masking(name="masking")(inputs)
    x, h, c = L.LSTM(8, return_sequences=True, return_state=True, name="lstm_1")(x)
    x = L.LSTM(6, go_backwards=True, name="lstm_2")(x)
    return L.Dense(3, name="logits")(L.Concatenate()([x, h]))


def bidirectional(inputs):
    x = L.Bidirectional(L.SimpleRNN(6, return_sequences=True), name="bidirectional")(inputs)
    return L.Dense(3, name="logits")(L.GRU(5, reset_after=False, name="gru")(x))


def seq2seq(inputs):
    # An encoder read only through its states (the hand-over to the optimizer must ride on them too), whose
    # states start a decoder.
    _, h, c = L.LSTM(6, return_state=True, name="encoder")(inputs)
    x = L.LSTM(6, return_sequences=True, name="decoder")(inputs, initial_state=[h, c])
    return L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(x))


def sequential():
    return keras.Sequential([keras.Input((7, 4)), L.GRU(8, name="gru"), L.Dense(3, name="logits")],
                            name="sequential")


MODELS = {
    # name: (builder, the state LocalFishers expected)
    "gru": (gru, 1),
    "lstm_masked": (lstm_masked, 2),
    "seq2seq": (seq2seq, 2),
    "bidirectional": (bidirectional, 3),
    "sequential": (None, 1),
}


def state_fishers(model):
    return [fisher for layer in model.layers if isinstance(layer, keras_sngd.RecurrentWhitening)
            for fisher in layer.fishers]


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def check(name, build, rng):
    keras.utils.set_random_seed(0)
    if build is None:
        plain = sequential()
    else:
        inputs = keras.Input((7, 4))
        plain = keras.Model(inputs, build(inputs), name=name)
    features = rng.normal(size=(128, 7, 4)).astype("float32")
    if name == "lstm_masked":
        features[:, 5:] = 0.0  # padded steps
    labels = rng.integers(0, 3, 128)
    model, report = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments={"update_every": 4})
    probe = features[:16]
    before = numpy(model(probe))
    same_at_start = float(np.max(np.abs(before - numpy(plain(probe)))))
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(features, labels, batch_size=16, epochs=3, verbose=0)
    after = numpy(model(probe))
    fishers = state_fishers(model)
    refreshes = [int(numpy(fisher.refresh_count)) for fisher in fishers]
    failed = [int(numpy(fisher.failed_refresh_count)) for fisher in fishers]
    steps = [int(numpy(fisher.step)) for fisher in fishers]
    moved = [float(np.max(np.abs(numpy(fisher.inverse_root) - np.eye(fisher.inverse_root.shape[0]))))
             for fisher in fishers]
    # Then train: the same compiled step at a learning rate of 0.05 (the rate is an optimizer variable),
    # not a second compile, whose trace and XLA compilation per model made most of this script's time.
    model.optimizer.learning_rate = 0.05
    losses = model.fit(features, labels, batch_size=16, epochs=4, verbose=0).history["loss"]
    trained = numpy(model(probe))
    folded = keras_sngd.fold(model)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        loaded_fishers = state_fishers(loaded)
        load_error = float(np.max(np.abs(numpy(loaded(probe)) - trained)))
        loaded_state_equal = len(loaded_fishers) == len(fishers) and all(
            np.array_equal(numpy(a.inverse_root), numpy(b.inverse_root)) and int(numpy(a.step)) == int(numpy(b.step))
            for a, b in zip(fishers, loaded_fishers))
        folded_path = os.path.join(directory, "folded.keras")
        folded.save(folded_path)
        folded_loaded = keras.saving.load_model(folded_path)
        # Training goes on after loading (the handoff state and the routing are rebuilt).
        loaded.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        loaded_losses = loaded.fit(features, labels, batch_size=16, epochs=1, verbose=0).history["loss"]
    scale = np.max(np.abs(trained))
    return {
        "state_local_fishers": sorted(fisher.name for fisher in fishers),
        "inserted": [entry[2] for entry in report.inserted],
        "same_at_start": same_at_start,
        "refreshes": refreshes,
        "failed_refreshes": failed,
        "steps": steps,
        "inverse_root_moved": moved,
        "relative_change": float(np.max(np.abs(after - before)) / np.max(np.abs(before))),
        "losses": [float(loss) for loss in losses],
        "fold_error": float(np.max(np.abs(numpy(folded(probe)) - trained)) / scale),
        "folded_plain": not any(isinstance(layer, (keras_sngd.LocalFisher, keras_sngd.RecurrentWhitening))
                                for layer in folded.layers),
        "folded_load_error": float(np.max(np.abs(numpy(folded_loaded(probe)) - trained))),
        "load_error": load_error,
        "loaded_state_equal": loaded_state_equal,
        "loaded_losses": [float(loss) for loss in loaded_losses],
    }


def main():
    rng = np.random.default_rng(0)
    results = {name: dict(check(name, build, rng), expected=expected) for name, (build, expected) in MODELS.items()}
    print(json.dumps({"backend": keras.backend.backend(), "models": results}))


if __name__ == "__main__":
    main()
