"""Consumers' kernel regularizers on the effective kernel `U W'`, on one backend (KERAS_BACKEND): prints a
JSON report. Used by tests/test_regularization.py (in subprocesses for JAX and PyTorch, in-process for
TensorFlow through `report()` and `case()`).
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd


def regularized_model(dim):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((dim,))
    hidden = keras.layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2), name="d1")(inputs)
    outputs = keras.layers.Dense(5, kernel_regularizer=keras.regularizers.L1(1e-3), name="d2")(hidden)
    return keras.Model(inputs, outputs)


def total(losses):
    return float(sum(float(keras.ops.convert_to_numpy(loss)) for loss in losses))


def case(dim, rank):
    """One reconstruction (a dense or low-rank `U` before `d1`): regularization losses against the folded
    model's after training through refreshes, and the training loss at learning rate 0 across refreshes."""
    rng = np.random.default_rng(0)
    x = rng.random((128, dim)).astype("float32")
    y = rng.integers(0, 5, 128)
    model = keras_sngd.reconstruct(
        regularized_model(dim), local_fisher_arguments={"update_every": 2, "refresh_tolerance": 0.0},
        per_layer_arguments={"d1": {"damping": 1.0, "rank": rank}},
    )
    fishers = [layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.05), loss)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    folded = keras_sngd.fold(model)
    report = {
        "low_rank": [layer._low_rank() for layer in fishers],
        "refreshes": [int(keras.ops.convert_to_numpy(layer.refresh_count.value)) for layer in fishers],
        "regularization": total(model.losses),
        "folded_regularization": total(folded.losses),
    }
    # Learning rate 0, one step per epoch, a refresh every second step: the loss (with the penalties)
    # must not move when a refresh re-expresses W'.
    model.compile(keras.optimizers.SGD(0.0), loss)
    report["lr0_losses"] = model.fit(x, y, batch_size=128, epochs=6, verbose=0, shuffle=False).history["loss"]
    path = os.path.join(tempfile.mkdtemp(), "regularized.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    report["loaded_regularization"] = total(loaded.losses)
    report["config_regularizer"] = loaded.get_layer("d1").get_config()["kernel_regularizer"]["class_name"]
    return report


def report():
    return {"backend": keras.backend.backend(), "dense": case(40, None), "low_rank": case(300, 16)}


if __name__ == "__main__":
    print(json.dumps(report()))
