"""Train SNGD with `keras.distribution.DataParallel` on 2 JAX host devices and on one device.

Run by tests/test_distributed.py in a subprocess with KERAS_BACKEND=jax and
XLA_FLAGS=--xla_force_host_platform_device_count=2 (flags read when JAX starts). Prints one JSON line.
"""

import json
import sys

import jax
import keras
import numpy as np

from tests.scripts.sngd_case import STATE
from tests.scripts.sngd_case import build
from tests.scripts.sngd_case import data


def state(model):
    result = {"weights": [np.asarray(w).tolist() for w in model.get_weights()]}
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "inverse_root"):
            for name in STATE:
                result[f"{index}.{name}"] = np.asarray(getattr(layer, name).numpy()).tolist()
    return result


def fit(model, inputs, targets):
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(inputs, targets, batch_size=16, epochs=2, shuffle=False, verbose=0)


def main():
    inputs, targets = data()
    single = build(update_every=1)
    fit(single, inputs, targets)
    devices = jax.devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    parallel = build(update_every=1)
    fit(parallel, inputs, targets)
    sharding = str(parallel.layers[0].inverse_root.value.sharding)
    print(json.dumps({"devices": len(devices), "sharding": sharding, "single": state(single),
                      "parallel": state(parallel)}))


if __name__ == "__main__":
    sys.exit(main())
