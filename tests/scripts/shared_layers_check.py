"""Shared layers on the backend of `KERAS_BACKEND` (`tests/test_shared_layers.py`): a layer called at
several places per forward pass gets one LocalFisher, which counts one step per batch, refreshes and
hands the trust region's state to the optimizer once per step, and keeps the function through its
refreshes. Prints a JSON report as its last line."""

import json

import keras
import numpy as np

import keras_sngd
from keras_sngd.local_fisher import LocalFisher


def siamese():
    a, b = keras.Input((6,)), keras.Input((6,))
    shared = keras.layers.Dense(5, activation="tanh", name="shared")
    merged = keras.layers.Add()([shared(keras.layers.Dense(6)(a)), shared(keras.layers.Dense(6)(b))])
    return keras.Model([a, b], keras.layers.Dense(2)(merged))


def chain():
    a = keras.Input((6,))
    shared = keras.layers.Dense(6, activation="tanh", name="shared")
    return keras.Model(a, keras.layers.Dense(2)(shared(shared(keras.layers.Dense(6)(a)))))


def nested_twice():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh", name="shared")],
                             name="inner")
    a, b = keras.Input((6,)), keras.Input((6,))
    return keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([inner(a), inner(b)])))


def data(model, n=16):
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(n, 6)).astype("float32") for _ in model.inputs]
    return (inputs if len(inputs) > 1 else inputs[0]), rng.normal(size=(n, 2)).astype("float32")


def shared_kernel(model):
    for layer in model._flatten_layers():
        if layer.name == "shared":
            return layer.kernel
    raise AssertionError("no shared layer")


def case(builder):
    keras.utils.set_random_seed(0)
    x, y = data(builder())
    report = {}
    # SGD(0): only the refreshes move weights, and they must keep the outputs.
    keras.utils.set_random_seed(0)
    sngd = keras_sngd.reconstruct(builder(), local_fisher_arguments={"update_every": 2})
    fishers = [layer for layer in sngd._flatten_layers() if isinstance(layer, LocalFisher)]
    sngd.compile(keras.optimizers.SGD(0.0), loss="mse")
    before = keras.ops.convert_to_numpy(sngd.predict(x, verbose=0))
    sngd.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 8 steps
    after = keras.ops.convert_to_numpy(sngd.predict(x, verbose=0))
    report["relative_change"] = float(np.abs(after - before).max() / np.abs(before).max())
    report["steps"] = [int(keras.ops.convert_to_numpy(f.step)) for f in fishers]
    report["refreshes"] = [int(keras.ops.convert_to_numpy(f.refresh_count)) for f in fishers]
    first = sngd
    # A small learning rate: the trust region bounds each step against the weights before it (handed over
    # once per step); the shared kernel barely moves.
    keras.utils.set_random_seed(0)
    sngd = keras_sngd.reconstruct(builder())
    sngd.compile(keras.optimizers.SGD(1e-3), loss="mse")
    kernel = shared_kernel(sngd)
    start = float(np.linalg.norm(keras.ops.convert_to_numpy(kernel)))
    sngd.fit(x, y, batch_size=4, epochs=1, verbose=0)
    report["kernel_norm_ratio"] = float(np.linalg.norm(keras.ops.convert_to_numpy(kernel))) / start
    # And it trains: the first reconstruction goes on at a learning rate of 0.1 (the same compiled step,
    # the rate is an optimizer variable; a third model would only add its compilation to the test's time).
    keras.utils.set_random_seed(0)
    first.optimizer.learning_rate = 0.1
    history = first.fit(x, y, batch_size=4, epochs=3, verbose=0).history["loss"]
    report["losses"] = history
    return report


def main():
    report = {"backend": keras.backend.backend()}
    for name, builder in (("siamese", siamese), ("chain", chain), ("nested_twice", nested_twice)):
        report[name] = case(builder)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
