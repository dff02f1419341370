"""The optimizer's `gradient_accumulation_steps` and `use_ema` with LocalFishers, on the backend of
`KERAS_BACKEND` (`tests/test_gradient_accumulation.py`). Prints a JSON report as its last line.

With the trust region (reconstruct's default), `fit` must refuse with a ValueError: an accumulating Keras
optimizer merges the trust region's carriers by an elementwise maximum, and before this check SGD(0)
silently moved the outputs by about their own size. Without it (`max_step=None`) on TensorFlow and
PyTorch the refresh keeps the function under accumulation. `use_ema` must be refused on every backend,
with or without the trust region (a LocalFisher inserted by hand has none): the average of the whitened
kernels mixes the coordinates of different refreshes, and before this check SGD(0) moved the outputs by
10 times their size when fit copied it into the model.
"""

import json

import keras
import numpy as np

import keras_sngd


def fit(arguments, by_hand=False, **optimizer_options):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(128, 6)).astype("float32"), rng.integers(0, 3, 128)
    if by_hand:
        model = keras.Sequential([keras.Input((6,)), keras_sngd.LocalFisher(update_every=4),
                                  keras.layers.Dense(8, activation="relu"), keras_sngd.LocalFisher(update_every=4),
                                  keras.layers.Dense(3)])
    else:
        plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model = keras_sngd.reconstruct(plain, local_fisher_arguments=arguments)
    before = keras.ops.convert_to_numpy(model(features[:16]))
    model.compile(keras.optimizers.SGD(0.0, **(optimizer_options or {"gradient_accumulation_steps": 2})),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    try:
        model.fit(features, labels, batch_size=16, epochs=2, verbose=0)
    except Exception as error:  # noqa: BLE001 - the report says which error it was
        return {"error": str(error), "error_type": type(error).__name__}
    after = keras.ops.convert_to_numpy(model(features[:16]))
    refreshes = [int(keras.ops.convert_to_numpy(layer.refresh_count))
                 for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)]
    return {"relative_change": float(np.max(np.abs(after - before)) / np.max(np.abs(before))), "refreshes": refreshes}


if __name__ == "__main__":
    print(json.dumps({
        "backend": keras.backend.backend(),
        "default": fit(None),
        "no_trust_region": fit({"max_step": None}),
        "ema": fit(None, use_ema=True),
        "ema_by_hand": fit(None, by_hand=True, use_ema=True),
    }))
