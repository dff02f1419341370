"""Frozen consumers, on the backend of `KERAS_BACKEND`: `reconstruct` skips a frozen layer, and a
LocalFisher whose consumer is frozen after `reconstruct` rests in `fit` (no statistics, no refresh, no
re-expression of the frozen kernel, no warning), and trains again once it is unfrozen. Prints a JSON
report as its last line (`tests/test_frozen_consumers.py`)."""

import json
import warnings

import keras
import numpy as np

import keras_sngd
from keras_sngd.reconstruct import FROZEN


def model_with_a_frozen_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    frozen = keras.layers.Dense(8, activation="relu", name="frozen")
    frozen.trainable = False
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(frozen(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))


def fit(model, data, epochs=2):
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*data, batch_size=4, epochs=epochs, verbose=0)
    return [str(warning.message) for warning in caught]


def main():
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((16, 6)).astype("float32"), rng.standard_normal((16, 2)).astype("float32"))
    report = {"backend": keras.backend.backend()}

    plain = model_with_a_frozen_layer()
    sngd, summary = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments={"update_every": 2})
    report["skipped"] = [[path, reason == FROZEN] for path, _, reason in summary.skipped]
    report["inserted"] = [path for path, *_ in summary.inserted]
    report["hidden_damping"] = sngd.get_layer("hidden_local_fisher").damping
    kernel = np.array(sngd.get_layer("frozen").kernel.numpy())
    report["warnings_skipped"] = [m for m in fit(sngd, data) if "Gradients do not exist" in m]
    report["frozen_kernel_unchanged"] = bool(np.array_equal(kernel, sngd.get_layer("frozen").kernel.numpy()))

    # Frozen after reconstruct: its LocalFisher rests, the function is kept, fold still matches.
    sngd.get_layer("hidden").trainable = False
    fisher = sngd.get_layer("hidden_local_fisher")
    state = [np.array(v.numpy()) for v in (fisher.step, fisher.inverse_root, fisher.second_moment)]
    kernel = np.array(sngd.get_layer("hidden").kernel.numpy())
    report["warnings_resting"] = [m for m in fit(sngd, data) if "Gradients do not exist" in m]
    report["resting_state_unchanged"] = bool(all(np.array_equal(old, new.numpy()) for old, new in zip(
        state, (fisher.step, fisher.inverse_root, fisher.second_moment))))
    report["resting_kernel_unchanged"] = bool(np.array_equal(kernel, sngd.get_layer("hidden").kernel.numpy()))
    report["out_steps"] = int(sngd.get_layer("out_local_fisher").step.numpy())
    folded = keras_sngd.fold(sngd)
    report["fold_error"] = float(np.abs(keras.ops.convert_to_numpy(folded(data[0])) - keras.ops.convert_to_numpy(sngd(data[0]))).max())

    # Unfrozen again: it takes in statistics again (and checks for a refresh).
    sngd.get_layer("hidden").trainable = True
    steps = int(fisher.step.numpy())
    moment = np.array(fisher.second_moment.numpy())
    fit(sngd, data)
    report["unfrozen_steps"] = int(fisher.step.numpy()) - steps
    report["unfrozen_statistics_moved"] = bool(not np.allclose(moment, fisher.second_moment.numpy()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
