"""Train a small SNGD model on the backend in KERAS_BACKEND and check the layer's state against numpy.

Run by tests/test_backends.py in a subprocess (a process has one Keras backend). Prints one JSON line.
"""

import json
import sys

import keras
import numpy as np

from keras_sngd import LocalFisher
from keras_sngd import newton_schulz


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((128, 6)) + 0.5).astype("float32")
    targets = inputs @ rng.standard_normal((6, 2)).astype("float32")
    model = keras.Sequential(
        [keras.Input((6,)), LocalFisher(update_every=4), keras.layers.Dense(8, activation="relu"),
         LocalFisher(update_every=4), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
    losses = model.fit(inputs, targets, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    layer = model.layers[0]
    moment = np.asarray(layer.second_moment.numpy(), np.float64) / float(layer.statistics_weight.numpy())
    damped = moment + layer.damping * np.trace(moment) / 6 * np.eye(6)
    eigenvalues, vectors = np.linalg.eigh(damped)
    reference = (vectors / np.sqrt(eigenvalues)) @ vectors.T
    error = np.linalg.norm(layer.inverse_root.numpy() - reference) / np.linalg.norm(reference)

    _, inverse_root, residual = newton_schulz(damped.astype("float32"), return_residual=True)
    ns_error = np.linalg.norm(np.asarray(inverse_root) - reference) / np.linalg.norm(reference)
    float64_error = None
    try:
        newton_schulz(damped, dtype="float64")
    except ValueError as exception:
        float64_error = str(exception)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "losses": [float(loss) for loss in losses],
        "step": int(layer.step.numpy()),
        "refresh_count": int(layer.refresh_count.numpy()),
        "failed_refresh_count": int(layer.failed_refresh_count.numpy()),
        "layer_error": float(error),
        "newton_schulz_error": float(ns_error),
        "residual": float(residual),
        "float64_error": float64_error,
        "refresh_mode": layer.refresh_mode,
    }))


if __name__ == "__main__":
    sys.exit(main())
