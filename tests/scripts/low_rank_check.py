"""A LocalFisher with a low-rank U trained on one backend (KERAS_BACKEND): prints a JSON report.

Used by tests/test_low_rank.py in subprocesses, one per backend.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd
from keras_sngd.low_rank import dense_root


def data(rows=256, dim=300, seed=0):
    rng = np.random.default_rng(seed)
    # A few strong directions over a weak floor, like natural data.
    scales = np.concatenate([np.linspace(6.0, 2.0, 8), np.full(dim - 8, 0.3)]).astype("float32")
    mixing = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype("float32")
    features = (rng.standard_normal((rows, dim)).astype("float32") * scales) @ mixing
    labels = (features[:, :3].sum(axis=1) > 0).astype("int32")
    return features, labels


def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((300,))
    hidden = keras_sngd.LocalFisher(rank=16, damping=1.0, update_every=4, refresh_tolerance=0.0, name="wide")(inputs)
    hidden = keras.layers.Dense(8, activation="relu", name="dense")(hidden)
    outputs = keras.layers.Dense(2, name="logits")(hidden)
    built = keras.Model(inputs, outputs)
    for layer in built.layers:
        if isinstance(layer, keras_sngd.LocalFisher):
            layer.prepare_handoff()
    return built


def main():
    x, y = data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    report = {"backend": keras.backend.backend()}

    net = model()
    layer = net.get_layer("wide")
    report["low_rank"] = layer._low_rank() and layer.low_rank_basis.shape == (300, 16)
    net.compile(keras.optimizers.SGD(0.0), loss)
    before = np.asarray(net.predict(x, verbose=0))
    net.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)  # 16 steps: 4 refreshes
    after = np.asarray(net.predict(x, verbose=0))
    report["lr0_change"] = float(np.abs(after - before).max() / np.abs(before).max())
    # What a step hands to the optimizer (JAX: `keras_sngd.handoff`): the carriers' shapes.
    report["carrier_shapes"] = sorted(list(v.shape) for v in net.variables if getattr(v, "_keras_sngd_carrier", False))
    report["refresh_count"] = int(np.asarray(layer.refresh_count))
    report["failed_refresh_count"] = int(np.asarray(layer.failed_refresh_count))
    dense = np.asarray(dense_root(layer._current_root(), 300))
    report["factors_error"] = float(np.abs(dense - np.asarray(layer.inverse_root)).max())

    net = model()
    net.compile(keras.optimizers.SGD(0.1), loss)
    history = net.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0).history["loss"]
    report["losses"] = [float(value) for value in history]
    layer = net.get_layer("wide")
    report["trained_refreshes"] = int(np.asarray(layer.refresh_count))
    outputs = np.asarray(net.predict(x, verbose=0))
    folded = keras_sngd.fold(net)
    report["fold_error"] = float(np.abs(np.asarray(folded.predict(x, verbose=0)) - outputs).max())
    path = os.path.join(tempfile.mkdtemp(), "low_rank.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    report["load_error"] = float(np.abs(np.asarray(loaded.predict(x, verbose=0)) - outputs).max())
    report["loaded_rank"] = loaded.get_layer("wide")._resolved_rank
    print(json.dumps(report))


if __name__ == "__main__":
    main()
