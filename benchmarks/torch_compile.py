"""SNGD with `jit_compile=True` on PyTorch (`torch.compile`) against eager, and the plain model.

A small MLP (20-16-3, random data, batch 8): the first `fit` of 2 steps (compilation included) and a
`fit` of 32 steps, for the plain model and its `reconstruct`ion, each with `jit_compile=False` (Keras's
default on PyTorch) and `True`. Run:

    KERAS_BACKEND=torch python benchmarks/torch_compile.py
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    import keras
    import numpy as np
    import torch

    import keras_sngd

    if keras.backend.backend() != "torch":
        raise SystemExit("Run with KERAS_BACKEND=torch.")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x, y = rng.random((256, 20), "float32"), rng.integers(0, 3, 256)
    print(f"PyTorch {torch.__version__}, Keras {keras.__version__}, 1 thread")
    print("| model | jit_compile | first fit, 2 steps (s) | 32 steps (s) |")
    print("|---|---|---|---|")
    for sngd in (False, True):
        for jit_compile in (False, True):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="relu"),
                                      keras.layers.Dense(3)])
            if sngd:
                model = keras_sngd.reconstruct(model)
            model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=jit_compile)
            start = time.perf_counter()
            model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            print(f"| {'SNGD' if sngd else 'plain'} | {jit_compile} | {first:.2f} | {time.perf_counter() - start:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
