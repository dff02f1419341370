"""A refresh under a mixed precision policy keeps the model's function, on the backend of
`KERAS_BACKEND` (`tests/test_mixed_precision_refresh.py`). Prints a JSON report as its last line.

SGD(0.0): only the refreshes change weights. Under `mixed_bfloat16` Keras reads float variables inside
a layer's call as bfloat16 casts; the re-expression `W' <- M W'` must read and write the float32
kernel (on PyTorch an assignment to the cast was lost, and the outputs moved by 7.5 times their size).
"""

import json

import keras
import numpy as np

import keras_sngd
from keras_sngd.fisher_layer import FisherLayer


def main():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, activation="relu")(x)
    plain = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(x))
    rng = np.random.default_rng(0)
    images, targets = rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")
    sngd = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2})
    sngd.compile(keras.optimizers.SGD(0.0), loss="mse")
    before = keras.ops.convert_to_numpy(sngd(images, training=False)).astype("float64")
    for _ in range(4):
        sngd.train_on_batch(images[:4], targets[:4])
    after = keras.ops.convert_to_numpy(sngd(images, training=False)).astype("float64")
    fishers = [layer for layer in sngd.layers if isinstance(layer, FisherLayer)]
    print(json.dumps({
        "backend": keras.backend.backend(),
        "refreshes": [int(keras.ops.convert_to_numpy(layer.refresh_count)) for layer in fishers],
        "relative_change": float(np.abs(after - before).max() / np.abs(before).max()),
    }))


if __name__ == "__main__":
    main()
