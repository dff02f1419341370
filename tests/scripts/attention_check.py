"""LocalFishers before attention layers' query, key and value projections, on the backend of
`KERAS_BACKEND` (`tests/test_attention.py`). Prints a JSON report as its last line.

For each model: `reconstruct` inserts one LocalFisher per distinct tensor among an attention layer's
query, key and value; through SGD(0.0) only the refreshes change weights, so the outputs must not move
(a refresh re-expresses every projection that reads the whitened tensor); then real training lowers the
loss, `fold` gives the trained function, and a `.keras` file reloads it.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd

L = keras.layers


def head(x):
    return L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(x))


def self_attention(x):
    return head(L.MultiHeadAttention(2, 4, name="attention")(x, x))


def causal_self_attention_keywords(x):
    h = L.Dense(8, activation="relu")(x)
    return head(h + L.MultiHeadAttention(2, 4, name="attention")(query=h, value=h, use_causal_mask=True))


def cross_attention(x):
    # The query reads one tensor, the key and value another: two LocalFishers.
    query = L.Dense(8, activation="tanh")(x)
    return head(L.MultiHeadAttention(2, 4, name="attention")(query, x))


def query_key_value_apart(x):
    # Three tensors: three LocalFishers, the key's passed by keyword after a mask.
    query = L.Dense(8, activation="tanh")(x)
    key = L.Dense(5, activation="relu")(x)
    column = keras.ops.abs(x[:, :, :1])
    mask = keras.ops.greater(column + keras.ops.transpose(column, (0, 2, 1)), -1.0)  # (batch, 5, 5), all True
    return head(L.MultiHeadAttention(2, 4, name="attention")(query, x, attention_mask=mask, key=key))


def grouped_query_attention(x):
    return head(L.GroupQueryAttention(4, 4, 2, name="attention")(x, x))


MODELS = {
    "self_attention": (self_attention, 1),
    "causal_self_attention_keywords": (causal_self_attention_keywords, 1),
    "cross_attention": (cross_attention, 2),
    "query_key_value_apart": (query_key_value_apart, 3),
    "grouped_query_attention": (grouped_query_attention, 1),
}


def check(name, build, rng):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    plain = keras.Model(inputs, build(inputs), name=name)
    features = rng.normal(size=(128, 5, 6)).astype("float32")
    labels = rng.integers(0, 3, 128)
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    probe = features[:16]
    before = keras.ops.convert_to_numpy(model(probe))
    same_at_start = float(np.max(np.abs(before - keras.ops.convert_to_numpy(plain(probe)))))
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(features, labels, batch_size=16, epochs=3, verbose=0)
    after = keras.ops.convert_to_numpy(model(probe))
    attention = [layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)
                 and layer.name.startswith("attention_")]
    refreshes = [int(keras.ops.convert_to_numpy(layer.refresh_count)) for layer in attention]
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
        "attention_local_fishers": sorted(layer.name for layer in attention),
        "inserted": [entry[2] for entry in report.inserted],
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
    results = {name: dict(check(name, build, rng), expected=expected) for name, (build, expected) in MODELS.items()}
    print(json.dumps({"backend": keras.backend.backend(), "models": results}))


if __name__ == "__main__":
    main()
