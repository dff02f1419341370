"""`jit_compile=True` on PyTorch (`torch.compile`): a LocalFisher's bookkeeping runs eagerly between the
compiled pieces (`keras_sngd.fisher_layer._eager_under_torch_compile`), so training refreshes and matches
the eager run, and Dynamo does not hit its recompile limit (`tests/test_host_schedule.py`). Prints a
JSON report as its last line."""

import json
import logging

import keras
import numpy as np
import torch

import keras_sngd
from keras_sngd.local_fisher import LocalFisher


class _LimitHits(logging.Handler):
    def __init__(self):
        super().__init__()
        self.hits = 0

    def emit(self, record):
        if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
            self.hits += 1


def run(jit_compile):
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    sngd = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2})
    sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 12), "float32"), rng.integers(0, 3, 64)
    losses = sngd.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history["loss"]
    fishers = [layer for layer in sngd.layers if isinstance(layer, LocalFisher)]
    return losses, [int(f.step.numpy()) for f in fishers], [int(f.refresh_count.numpy()) for f in fishers]


def main():
    handler = _LimitHits()
    logging.getLogger("torch._dynamo").addHandler(handler)
    eager = run(False)
    compiled = run(True)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "torch": torch.__version__,
        "eager": eager,
        "compiled": compiled,
        "limit_hits": handler.hits,
    }))


if __name__ == "__main__":
    main()
