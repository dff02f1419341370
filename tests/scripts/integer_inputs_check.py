"""A LocalFisher on integer features keeps the model's function and its trust region, on the backend of
`KERAS_BACKEND` (`tests/test_integer_inputs.py`). Prints a JSON report as its last line.

An `int32` input read directly by a Dense layer (which promotes it in its product), through SGD(0.0):
only the refreshes change weights, so the outputs must not move. Before the fix the LocalFisher whitened
in the input's dtype, with `U` cast to int32 (truncated): the outputs moved by about their own size at the
first refresh, and the integer output carried no gradient to the trust region's carriers (Keras warned
"Gradients do not exist").
"""

import json
import warnings

import keras
import numpy as np

import keras_sngd


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    features = rng.integers(0, 5, size=(256, 6)).astype("int32")
    labels = rng.integers(0, 3, 256)
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    model = keras_sngd.reconstruct(plain)
    same_at_start = float(np.max(np.abs(keras.ops.convert_to_numpy(model(features[:16]))
                                        - keras.ops.convert_to_numpy(plain(features[:16])))))
    before = keras.ops.convert_to_numpy(model(features[:16]))
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(features, labels, batch_size=16, epochs=2, verbose=0)
    after = keras.ops.convert_to_numpy(model(features[:16]))
    fishers = [layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)]
    # Then real training: the loss goes down, and fold gives the trained function.
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(features, labels, batch_size=16, epochs=3, verbose=0).history["loss"]
    trained = keras.ops.convert_to_numpy(model(features[:16]))
    folded = keras.ops.convert_to_numpy(keras_sngd.fold(model)(features[:16]))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "same_at_start": same_at_start,
        "refreshes": [int(keras.ops.convert_to_numpy(layer.refresh_count)) for layer in fishers],
        "relative_change": float(np.max(np.abs(after - before)) / np.max(np.abs(before))),
        "output_dtype": keras.backend.standardize_dtype(fishers[0](features[:4]).dtype),
        "missing_gradient_warnings": sum("Gradients do not exist" in str(item.message) for item in caught),
        "losses": [float(loss) for loss in losses],
        "fold_error": float(np.max(np.abs(folded - trained)) / np.max(np.abs(trained))),
    }))


if __name__ == "__main__":
    main()
