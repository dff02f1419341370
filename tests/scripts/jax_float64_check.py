"""`refresh_dtype="float64"` on JAX: refused when the layer is built without `jax_enable_x64` (a ValueError
naming the argument, not an error inside the first refresh of `fit`), and refreshing in float64 with it.
Prints a JSON report as its last line (`tests/test_local_fisher.py`)."""

import json

import jax
import keras
import numpy as np

from keras_sngd import LocalFisher


def main():
    report = {"backend": keras.backend.backend()}
    inputs = np.random.default_rng(0).standard_normal((32, 5)).astype("float32")
    try:
        LocalFisher(refresh_dtype="float64")(inputs)
        report["without_x64"] = "built"
    except ValueError as error:
        report["without_x64"] = str(error)
    jax.config.update("jax_enable_x64", True)
    layer = LocalFisher(refresh_dtype="float64", update_every=1, refresh_tolerance=0.0)
    layer(inputs, training=True)
    report["refreshes_with_x64"] = int(keras.ops.convert_to_numpy(layer.refresh_count.value))
    root = np.asarray(keras.ops.convert_to_numpy(layer.inverse_root.value), "float64")
    fisher = inputs.T.astype("float64") @ inputs / len(inputs)
    damped = fisher + layer.damping * np.trace(fisher) / 5 * np.eye(5)
    report["whitening_error"] = float(np.abs(root.T @ damped @ root - np.eye(5)).max())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
