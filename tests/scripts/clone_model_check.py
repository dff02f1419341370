"""`keras.models.clone_model` of a reconstruction, on the backend of `KERAS_BACKEND`
(`tests/test_clone_model.py`). Prints a JSON report as its last line.

A prepared LocalFisher or StepBound holds carrier variables for its trust region, created after the model
was built. A copy built from the configs (`clone_model`) creates the same carriers at build, so that it
holds the original's weight list (`clone.set_weights(model.get_weights())`), and binds them at its first
training call: its steps are bounded as the original's are, without the "not prepared" fallback.
"""

import json
import os
import tempfile
import warnings

import keras
import numpy as np

import keras_sngd

L = keras.layers
BOUNDED = ("hidden", "depthwise", "head")  # a LocalFisher's consumers and a StepBound's layer


def build():
    x = inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = L.Flatten()(x)
    x = L.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def largest_steps(model, features, labels, steps):
    largest = {name: 0.0 for name in BOUNDED}
    for index in range(steps):
        before = {name: [keras.ops.convert_to_numpy(w).copy() for w in model.get_layer(name).trainable_weights]
                  for name in BOUNDED}
        batch = slice(16 * (index % 4), 16 * (index % 4) + 16)
        model.train_on_batch(features[batch], labels[batch])
        for name in BOUNDED:
            after = [keras.ops.convert_to_numpy(w) for w in model.get_layer(name).trainable_weights]
            step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before[name])))
            size = np.sqrt(sum(np.sum(b ** 2) for b in before[name]))
            largest[name] = max(largest[name], float(step / size))
    return largest


def main():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 6, 6, 3)).astype("float32")
    labels = rng.integers(0, 3, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    model = keras_sngd.reconstruct(build(), local_fisher_arguments={"max_step": 0.05, "update_every": 2})
    model.compile(keras.optimizers.SGD(0.05), loss)
    model.fit(features, labels, batch_size=16, epochs=1, verbose=0)
    probe = features[:8]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clone = keras.models.clone_model(model)
        weight_counts = [len(model.weights), len(clone.weights)]
        clone.set_weights(model.get_weights())
        clone_error = float(np.max(np.abs(keras.ops.convert_to_numpy(clone(probe)) - keras.ops.convert_to_numpy(model(probe)))))
        for layer in clone.layers:
            if isinstance(layer, keras_sngd.LocalFisher):
                layer.update_every = 10**6  # no refresh: its mixing of the kernels is not an optimizer step
        clone.compile(keras.optimizers.SGD(30.0), loss)
        largest = largest_steps(clone, features, labels, 4)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "clone.keras")
        clone.save(path)
        loaded = keras.saving.load_model(path)
    load_error = float(np.max(np.abs(keras.ops.convert_to_numpy(loaded(probe)) - keras.ops.convert_to_numpy(clone(probe)))))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "weight_counts": weight_counts,
        "clone_error": clone_error,
        "largest": largest,
        "unprepared_warnings": [str(w.message) for w in caught if "prepare" in str(w.message)],
        "load_error": load_error,
        "loaded_weight_count": len(loaded.weights),
    }))


if __name__ == "__main__":
    main()
