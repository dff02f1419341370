"""The trust region of the layers SNGD cannot whiten (`keras_sngd.step_bound`), on the backend of
`KERAS_BACKEND` (`tests/test_step_bound.py`). Prints a JSON report as its last line.

A small CNN with a depthwise, a separable and a grouped convolution goes through `reconstruct`: each of
the three gets a `StepBound`. At a learning rate far too large, every optimizer step of those layers
(all their trainable weights together) must be at most `max_step` times their norm, and some must have
been shortened to it; the same after a `.keras` reload. `fold` drops the StepBounds and keeps the
function.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd

L = keras.layers
BOUNDED = ("depthwise", "separable", "grouped")


def build():
    x = inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="separable")(x)
    x = L.Conv2D(8, 3, groups=2, padding="same", activation="relu", name="grouped")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def build_shared():
    """One depthwise convolution called at two sites: one StepBound before both calls."""
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    shared = L.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")
    x = shared(x) + shared(L.Conv2D(8, 1, name="side")(x))
    return keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))


def shared_steps(features, labels):
    keras.utils.set_random_seed(0)
    model = keras_sngd.reconstruct(build_shared())
    model.compile(keras.optimizers.SGD(30.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    largest = 0.0
    for index in range(4):
        before = [keras.ops.convert_to_numpy(w).copy() for w in model.get_layer("depthwise").trainable_weights]
        model.train_on_batch(features[16 * index:16 * index + 16], labels[16 * index:16 * index + 16])
        after = [keras.ops.convert_to_numpy(w) for w in model.get_layer("depthwise").trainable_weights]
        step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))
        largest = max(largest, float(step / np.sqrt(sum(np.sum(b ** 2) for b in before))))
    return sum(isinstance(layer, keras_sngd.StepBound) for layer in model.layers), largest


def weights_of(model):
    return {name: [keras.ops.convert_to_numpy(w).copy() for w in model.get_layer(name).trainable_weights]
            for name in BOUNDED}


def relative_steps(before, after):
    result = {}
    for name in BOUNDED:
        step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after[name], before[name])))
        size = np.sqrt(sum(np.sum(b ** 2) for b in before[name]))
        result[name] = float(step / size)
    return result


def train_steps(model, features, labels, steps):
    largest = {name: 0.0 for name in BOUNDED}
    for index in range(steps):
        before = weights_of(model)
        batch = slice(16 * (index % 4), 16 * (index % 4) + 16)
        model.train_on_batch(features[batch], labels[batch])
        for name, value in relative_steps(before, weights_of(model)).items():
            largest[name] = max(largest[name], value)
    return largest


def main():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8, 8, 4)).astype("float32")
    labels = rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    plain = build()
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    bounds = [layer for layer in model.layers if isinstance(layer, keras_sngd.StepBound)]
    probe = features[:8]
    same_at_start = float(np.max(np.abs(keras.ops.convert_to_numpy(model(probe)) - keras.ops.convert_to_numpy(plain(probe)))))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(30.0), loss)
    largest = train_steps(model, features, labels, 6)
    # Plain SGD at the same rate, for comparison: the steps the bound shortens.
    keras.utils.set_random_seed(0)
    unbounded = build()
    unbounded.compile(keras.optimizers.SGD(30.0), loss)
    plain_largest = train_steps(unbounded, features, labels, 6)
    trained = keras.ops.convert_to_numpy(model(probe))
    folded = keras_sngd.fold(model)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    load_error = float(np.max(np.abs(keras.ops.convert_to_numpy(loaded(probe)) - trained)))
    loaded.compile(keras.optimizers.SGD(30.0), loss)
    loaded_largest = train_steps(loaded, features, labels, 4)
    shared_bounds, shared_largest = shared_steps(features, labels)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "shared_bounds": shared_bounds,
        "shared_largest": shared_largest,
        "step_bounds": sorted(layer.name for layer in bounds),
        "max_steps": sorted({layer.max_step for layer in bounds}),
        "skipped": {entry[0]: entry[2] for entry in report.skipped},
        "same_at_start": same_at_start,
        "largest": largest,
        "plain_largest": plain_largest,
        "loaded_largest": loaded_largest,
        "fold_error": float(np.max(np.abs(keras.ops.convert_to_numpy(folded(probe)) - trained)) / np.max(np.abs(trained))),
        "folded_types": sorted({type(layer).__name__ for layer in folded.layers}),
        "load_error": load_error,
    }))


if __name__ == "__main__":
    main()
