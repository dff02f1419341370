"""Train SNGD under tf.distribute.MirroredStrategy on 2 logical CPU devices and on one device.

`jit_compile` is left to Keras ("auto"): `jit_compile=True` under MirroredStrategy on logical CPU devices
fails in Keras itself, for a plain Dense model too (XLA cannot read a variable placed on the other device).

Run by tests/test_distributed.py in a subprocess (logical devices must be configured before TensorFlow
initializes, which would disturb other tests). Prints one JSON line: the LocalFisher state and weights of
both runs and of each replica.
"""

import json
import sys

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sngd import LocalFisher  # noqa: E402
from tests.scripts.sngd_case import STATE  # noqa: E402
from tests.scripts.sngd_case import build  # noqa: E402
from tests.scripts.sngd_case import data  # noqa: E402

def fit(model, jit_compile, inputs, targets):
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=jit_compile)
    model.fit(inputs, targets, batch_size=16, epochs=2, shuffle=False, verbose=0)


def state(model):
    result = {"weights": [np.asarray(w).tolist() for w in model.get_weights()]}
    for index, layer in enumerate(model.layers):
        if isinstance(layer, LocalFisher):
            for name in STATE:
                result[f"{index}.{name}"] = np.asarray(getattr(layer, name).numpy()).tolist()
    return result


def replicas(model):
    """Each replica's copy of every variable of the model (kernels re-expressed by refreshes included)."""
    copies = {}
    for variable in model.weights:
        values = getattr(variable.value, "values", (variable.value,))
        copies[variable.path] = [np.asarray(v.numpy()).tolist() for v in values]
    return copies


def main():
    jit_compile = sys.argv[1] == "jit" if len(sys.argv) > 1 else "auto"
    update_every = 1
    inputs, targets = data()
    single = build(update_every)
    fit(single, jit_compile, inputs, targets)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build(update_every)
        fit(mirrored, jit_compile, inputs, targets)
    print(json.dumps({
        "replicas_in_sync": strategy.num_replicas_in_sync,
        "single": state(single),
        "mirrored": state(mirrored),
        "replicas": replicas(mirrored),
    }))


if __name__ == "__main__":
    sys.exit(main())
