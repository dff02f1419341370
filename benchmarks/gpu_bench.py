"""SNGD against SGD per training step on ResNet-18 and VGG-16 at CIFAR-10 size, synthetic data, any backend.

Run by `bash benchmarks/gpu.sh` (JAX on a GPU machine without TensorFlow); runs anywhere Keras runs:

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --steps 60 --batch 128

First two correctness checks, then the timings:

1. function preservation: a reconstructed CNN trained with SGD(0.0) through refreshes (with
   `FunctionPreservingRefresh`) keeps its outputs (relative change printed, must be < 1e-3);
2. finite training: SNGD on each model for the timed steps ends with a finite loss.

Timing: `model.fit` on `--steps` random batches (`--batch` 32x32x3 images, 10 classes), SGD(0.01,
momentum 0.9) on the plain model and on its `reconstruct`ion (`reconstruct`'s defaults: for these
convolutional networks a refresh check every 10 steps, so refreshes are inside the timed window). Each step's end is awaited (the loss read back),
the first `--warmup` steps (compilation) are left out, and the mean seconds per step over the rest is
reported, refreshes included. Prints a table and one JSON line. Exits 1 if a check fails.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras_sngd  # noqa: E402
from keras_sngd.models import resnet18_cifar  # noqa: E402
from keras_sngd.models import vgg16_cifar  # noqa: E402

MODELS = {"resnet18": resnet18_cifar, "vgg16": vgg16_cifar}


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of each training step, awaited by reading the loss back to the host."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(keras.ops.convert_to_numpy(logs["loss"]))
        self.times.append(time.perf_counter() - self._start)


def synthetic(steps, batch, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((steps * batch, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, steps * batch)
    return images, labels


def check_function_preservation():
    """A small CNN, reconstructed, SGD(0.0), 12 steps with a refresh every 4: outputs must not move."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, keras.layers.Dense(10)(x))
    # refresh_tolerance=0: refresh at every due step (the weights do not move, so the drift check would skip).
    model = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 4, "refresh_tolerance": 0.0})
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    images = (rng.standard_normal((96, 16, 16, 3)) * rng.uniform(0.3, 3.0, 3) + 0.5).astype("float32")
    labels = rng.integers(0, 10, 96)
    before = np.asarray(model.predict(images, verbose=0))
    model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[keras_sngd.FunctionPreservingRefresh()])
    after = np.asarray(model.predict(images, verbose=0))
    refreshes = [int(layer.refresh_count.numpy()) for layer in keras_sngd.callbacks.local_fishers(model)]
    return float(np.abs(after - before).max() / np.abs(before).max()), refreshes


def time_fit(model, images, labels, batch, sngd):
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = StepTimer()
    callbacks = [timer] + ([keras_sngd.FunctionPreservingRefresh()] if sngd else [])
    history = model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return timer.times, history.history["loss"][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="timed training steps per run (default 120)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default 5)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--models", default="resnet18,vgg16", help="comma-separated, of resnet18, vgg16")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    device = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    print(f"backend {keras.backend.backend()}, device {device}, keras {keras.__version__}", flush=True)

    change, refreshes = check_function_preservation()
    preserved = change < 1e-3 and min(refreshes) == 3
    print(f"check 1, function preservation: relative output change {change:.2e} over refreshes {refreshes} "
          f"-> {'ok' if preserved else 'FAILED'}", flush=True)

    images, labels = synthetic(args.steps, args.batch)
    rows, finite = [], True
    for name in args.models.split(","):
        build = MODELS[name]
        keras.utils.set_random_seed(0)
        plain = build(width=args.width)
        sngd = keras_sngd.reconstruct(plain)
        sgd_times, sgd_loss = time_fit(plain, images, labels, args.batch, sngd=False)
        sngd_times, sngd_loss = time_fit(sngd, images, labels, args.batch, sngd=True)
        refresh_count = int(keras_sngd.callbacks.local_fishers(sngd)[0].refresh_count.numpy())
        sgd_step = float(np.mean(sgd_times[args.warmup:]))
        sngd_step = float(np.mean(sngd_times[args.warmup:]))
        finite = finite and bool(np.isfinite(sngd_loss) and np.isfinite(sgd_loss))
        rows.append({
            "model": name, "batch": args.batch, "timed_steps": args.steps - args.warmup,
            "sgd_s_per_step": sgd_step, "sngd_s_per_step": sngd_step, "ratio": sngd_step / sgd_step,
            "sngd_refreshes": refresh_count, "sgd_loss": float(sgd_loss), "sngd_loss": float(sngd_loss),
        })
        print(f"{name:9s} SGD {sgd_step * 1e3:8.2f} ms/step  SNGD {sngd_step * 1e3:8.2f} ms/step  "
              f"ratio {sngd_step / sgd_step:5.3f}  ({refresh_count} refreshes; final loss SGD {sgd_loss:.3f}, "
              f"SNGD {sngd_loss:.3f})", flush=True)
    print(f"check 2, finite training: {'ok' if finite else 'FAILED'}")
    print(json.dumps({"backend": keras.backend.backend(), "device": device, "function_preservation": change,
                      "finite": finite, "rows": rows}))
    return 0 if preserved and finite else 1


if __name__ == "__main__":
    sys.exit(main())
