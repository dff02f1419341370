"""The original model stays usable and unchanged after its reconstruction trains and folds, on the backend of
`KERAS_BACKEND` (`tests/test_graph_corners.py`). Prints a JSON report as its last line.

The model holds an adapted `Normalization` and a layer that loads its own way and computes with its
variable (as KerasHub's DINOv2 layers do), whose state `reconstruct` and `fold` copy through
`save_own_variables` / `load_own_variables`. On JAX that copy once shared the original's arrays, which
training the reconstruction donated: the original model then failed with "Array has been deleted".
"""

import json

import keras
import numpy as np

import keras_sngd


class Scale(keras.layers.Layer):
    """A trained per-feature scale that loads its own way (here only Keras's, but overridden)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale

    def load_own_variables(self, store):
        super().load_own_variables(store)


def main():
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, (64, 6)).astype("float32")
    labels = rng.integers(0, 3, 64)
    normalization = keras.layers.Normalization(name="normalization")
    normalization.adapt(features)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(Scale(name="scale")(normalization(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    before = keras.ops.convert_to_numpy(model(features[:8]))
    sngd = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 2})
    sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sngd.fit(features, labels, batch_size=16, epochs=2, verbose=0)
    folded = keras_sngd.fold(sngd)
    folded.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    folded.fit(features, labels, batch_size=16, epochs=1, verbose=0)
    # Reconstructing the reconstruction (as after unfreezing layers) copies the LocalFishers' state: training
    # the new one must leave the first one usable too.
    first = keras.ops.convert_to_numpy(sngd(features[:8]))
    again = keras_sngd.reconstruct(sngd)
    again.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    again.fit(features, labels, batch_size=16, epochs=1, verbose=0)
    report = {"backend": keras.backend.backend()}
    try:
        report["reconstruction_change"] = float(np.max(np.abs(keras.ops.convert_to_numpy(sngd(features[:8])) - first)))
    except Exception as error:  # noqa: BLE001 - the report says what broke
        report["reconstruction_error"] = f"{type(error).__name__}: {error}"[:300]
    try:
        after = keras.ops.convert_to_numpy(model(features[:8]))
        report["original_change"] = float(np.max(np.abs(after - before)))
    except Exception as error:  # noqa: BLE001 - the report says what broke
        report["original_error"] = f"{type(error).__name__}: {error}"[:300]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
