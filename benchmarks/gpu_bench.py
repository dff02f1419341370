"""SNGD against SGD per training step on ResNet-18 and VGG-16 at CIFAR-10 size, synthetic data, any backend.

Run by `bash benchmarks/gpu.sh` (JAX, then PyTorch, on a GPU machine without TensorFlow); runs anywhere
Keras runs:

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --steps 60 --batch 128

First the correctness checks, then the timings:

1. function preservation: a reconstructed CNN trained with SGD(0.0) through refreshes keeps its outputs
   (relative change printed, must be < 1e-3), both on the default path (the refresh inside the train
   step; on JAX handed to the optimizer) and with `FunctionPreservingRefresh` (the refresh between steps);
2. refresh precision: the layer's warm-started refresh (`keras_sngd.compiled.shared`, full float32
   products) on random SPD matrices of widths 256 and 784 and condition numbers 1e2 and 1e4, jitted,
   against a float64 `eigh` reference, next to the same refresh at the backend's default matrix precision
   (TensorFloat-32 on JAX GPUs): the error of `U U^T` against `G_d^-1`, the residual, and whether the
   refresh is accepted. The layer's refresh must be accepted with an error < 1e-3 on every case;
3. finite training: SNGD on each model for the timed steps ends with a finite loss, and no refresh
   failed.

Timing: `model.fit` on `--steps` random batches (`--batch` 32x32x3 images, 10 classes), SGD(0.01,
momentum 0.9) on the plain model and on its `reconstruct`ion (`reconstruct`'s defaults: for these
convolutional networks a refresh check every 10 steps, so refreshes are inside the timed window), at the
backend's default matrix precision (what a user gets). Each step's end is awaited (the loss read back),
the first `--warmup` steps (compilation) are left out, and the mean seconds per step over the rest is
reported, refreshes included, with the median (a step without a refresh) and the first step's time
(compilation). `--variants` adds reconstructions with other LocalFisher arguments (no trust region,
statistics every 8th batch) to split an SNGD step's cost. Last (JAX, with the checks), the cost of a
`lax.cond` whose predicate is false, as every LocalFisher's refresh check is on most steps
(`conditional_cost`); `--variants between-steps` times the same SNGD with the refresh between steps
(`FunctionPreservingRefresh`), whose JAX train step has no conditional at all. Prints a table and one JSON line. Exits 1 if a check fails.
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
from keras_sngd.compiled import full_float32_products  # noqa: E402
from keras_sngd.models import resnet18_cifar  # noqa: E402
from keras_sngd.models import vgg16_cifar  # noqa: E402

MODELS = {"resnet18": resnet18_cifar, "vgg16": vgg16_cifar}
# LocalFisher arguments over reconstruct's defaults, to split an SNGD step's cost (`--variants`).
VARIANTS = {
    "default": {},
    "no-trust-region": {"max_step": None},
    "statistics-8": {"statistics_every": 8},
    "no-trust-region-statistics-8": {"max_step": None, "statistics_every": 8},
    # reconstruct's defaults, refreshed between steps by `FunctionPreservingRefresh`: on JAX the train step
    # then holds no conditional (no refresh check, no re-expression in the kernels' constraints).
    "between-steps": {},
}


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


def check_function_preservation(callback=True, full_precision=True):
    """A small CNN, reconstructed, SGD(0.0), 12 steps with a refresh every 4: outputs must not move.

    With `callback`, the refresh runs between steps (`FunctionPreservingRefresh`); without, on the default
    path (inside the train step). With `full_precision`, the whole model runs with full float32 products
    (the convolutions' own TensorFloat-32 rounding, about 5e-4 per product on a GPU, would otherwise move
    the outputs by about 1e-3 whenever the kernels are re-expressed, with or without an exact refresh).
    Returns the relative output change and each layer's refresh count."""
    if full_precision:
        with full_float32_products():
            return check_function_preservation(callback, full_precision=False)
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
    callbacks = [keras_sngd.FunctionPreservingRefresh()] if callback else []
    model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    after = np.asarray(model.predict(images, verbose=0))
    refreshes = [int(layer.refresh_count.numpy()) for layer in keras_sngd.callbacks.local_fishers(model)]
    return float(np.abs(after - before).max() / np.abs(before).max()), refreshes


def spd_matrix(dim, condition_number, seed=0):
    """Random SPD, eigenvalues log-spaced in [1/condition_number, 1], exactly float32, as float64."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    matrix = (basis * np.logspace(0.0, -np.log10(condition_number), dim)) @ basis.T
    return (0.5 * (matrix + matrix.T)).astype(np.float32).astype(np.float64)


def check_refresh_precision(damping=0.01):
    """The layer's refresh (full float32 products) and the same refresh at the default precision, jitted,
    against float64 `eigh`: cold (from `U = I`) and warm (from a perturbed exact `U`)."""
    from keras_sngd import fisher_layer
    from keras_sngd.refresh import warm_refresh

    def compiled(function):
        if keras.backend.backend() == "jax":
            import jax

            return jax.jit(function, static_argnums=(2,))
        return function

    variants = {"layer (full float32)": compiled(fisher_layer._warm_refresh),
                "default precision": compiled(warm_refresh)}
    rows = []
    for dim in (256, 784):
        for condition in (1e2, 1e4):
            fisher = spd_matrix(dim, condition, seed=dim)
            damped = fisher + damping * np.trace(fisher) / dim * np.eye(dim)
            values, vectors = np.linalg.eigh(damped)
            exact_root_inverse = (vectors / np.sqrt(values)) @ vectors.T
            inverse = np.linalg.inv(damped)
            rng = np.random.default_rng(dim + 1)
            starts = {"cold": np.eye(dim),
                      "warm": exact_root_inverse @ (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim)) / np.sqrt(dim))}
            for start, old in starts.items():
                for name, function in variants.items():
                    result = function(keras.ops.convert_to_tensor(fisher, "float32"),
                                      keras.ops.convert_to_tensor(old, "float32"), damping)
                    root = np.asarray(keras.ops.convert_to_numpy(result.inverse_root), np.float64)
                    error = np.linalg.norm(root @ root.T - inverse) / np.linalg.norm(inverse)
                    rows.append({"dim": dim, "condition": condition, "start": start, "variant": name,
                                 "error": float(error), "accepted": bool(keras.ops.convert_to_numpy(result.accepted)),
                                 "iterations": int(keras.ops.convert_to_numpy(result.iterations))})
    return rows


def conditional_cost(layers=21, repeats=50):
    """Seconds per call of a jitted chain of `layers` whitenings `x U_i` (x: 128 x 16 x 16 x 64), without
    and with one `lax.cond` per layer whose predicate is false (as on a step without a refresh), and with the
    same branches as a `where` (both computed). On GPUs XLA reads a conditional's predicate on the host, so
    each conditional may stall the stream: this measures what one costs. JAX only; `None` elsewhere."""
    if keras.backend.backend() != "jax":
        return None
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.standard_normal((128, 16, 16, 64)), jnp.float32)
    roots = jnp.asarray(np.eye(64) + 0.01 * rng.standard_normal((layers, 64, 64)), jnp.float32)
    step = jnp.asarray(3, jnp.int32)

    def heavy(root):
        for _ in range(6):
            root = 1.5 * root - 0.5 * root @ root @ root
        return root

    def chain(x, roots, step, mode):
        for i in range(layers):
            root = roots[i]
            if mode == "cond":
                root = jax.lax.cond(step % 10 == 0, heavy, lambda r: r, root)
            elif mode == "where":
                root = jnp.where(step % 10 == 0, heavy(root), root)
            x = jnp.tanh(x @ root)
        return jnp.sum(x)

    timings = {}
    for mode in ("none", "cond", "where"):
        function = jax.jit(lambda x, r, s, mode=mode: chain(x, r, s, mode))
        function(inputs, roots, step).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(inputs, roots, step).block_until_ready()
            times.append(time.perf_counter() - start)
        timings[mode] = float(np.median(times))
    return timings


def time_fit(model, images, labels, batch, between_steps=False):
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = StepTimer()
    callbacks = [timer] + ([keras_sngd.FunctionPreservingRefresh()] if between_steps else [])
    history = model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return timer.times, history.history["loss"][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="timed training steps per run (default 120)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default 5)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--models", default="resnet18,vgg16", help="comma-separated, of resnet18, vgg16")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1.0)")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated LocalFisher argument sets over reconstruct's, of {', '.join(VARIANTS)} "
                             "(default: default)")
    parser.add_argument("--no-checks", dest="checks", action="store_false",
                        help="skip checks 1 and 2 (the timings and check 3 still run)")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"--variants: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    device = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    elif keras.backend.backend() == "torch":
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"backend {keras.backend.backend()}, device {device}, keras {keras.__version__}", flush=True)

    preserved = True
    for callback in ([False, True] if args.checks else []):
        change, refreshes = check_function_preservation(callback=callback)
        ok = change < 1e-3 and min(refreshes) == 3
        preserved = preserved and ok
        path = "between steps (FunctionPreservingRefresh)" if callback else "default, inside the train step"
        print(f"check 1, function preservation, {path}: relative output change {change:.2e} over refreshes "
              f"{refreshes} -> {'ok' if ok else 'FAILED'}", flush=True)
    if args.checks:
        change, _ = check_function_preservation(callback=False, full_precision=False)
        print(f"  (for information: the same at the backend's default precision, the network's products "
              f"included: {change:.2e})", flush=True)

    precision_rows = check_refresh_precision() if args.checks else []
    if args.checks:
        print("check 2, refresh precision against float64 eigh (error of U U^T vs G_d^-1):")
        for row in precision_rows:
            print(f"  d={row['dim']:4d} cond={row['condition']:7.0e} {row['start']:4s} {row['variant']:21s} "
                  f"error {row['error']:.2e} accepted {row['accepted']!s:5s} iterations {row['iterations']}")
    layer_rows = [row for row in precision_rows if row["variant"].startswith("layer")]
    precise = all(row["accepted"] and row["error"] < 1e-3 for row in layer_rows)
    if args.checks:
        print(f"check 2: {'ok' if precise else 'FAILED'}", flush=True)

    images, labels = synthetic(args.steps, args.batch)
    rows, finite = [], True
    for name in args.models.split(","):
        build = MODELS[name]
        keras.utils.set_random_seed(0)
        plain = build(width=args.width)
        sgd_times, sgd_loss = time_fit(plain, images, labels, args.batch)
        sgd_step = float(np.mean(sgd_times[args.warmup:]))
        sgd_median = float(np.median(sgd_times[args.warmup:]))
        for variant in args.variants.split(","):
            keras.utils.set_random_seed(0)
            sngd = keras_sngd.reconstruct(build(width=args.width), local_fisher_arguments=VARIANTS[variant] or None)
            sngd_times, sngd_loss = time_fit(sngd, images, labels, args.batch, between_steps=variant == "between-steps")
            layers = keras_sngd.callbacks.local_fishers(sngd)
            refresh_count = int(layers[0].refresh_count.numpy())
            failed = sum(int(layer.failed_refresh_count.numpy()) for layer in layers)
            sngd_step = float(np.mean(sngd_times[args.warmup:]))
            sngd_median = float(np.median(sngd_times[args.warmup:]))
            finite = finite and bool(np.isfinite(sngd_loss) and np.isfinite(sgd_loss)) and failed == 0
            rows.append({
                "model": name, "variant": variant, "batch": args.batch, "timed_steps": args.steps - args.warmup,
                "sgd_s_per_step": sgd_step, "sngd_s_per_step": sngd_step, "ratio": sngd_step / sgd_step,
                "sgd_median_s": sgd_median, "sngd_median_s": sngd_median, "median_ratio": sngd_median / sgd_median,
                "sgd_first_step_s": float(sgd_times[0]), "sngd_first_step_s": float(sngd_times[0]),
                "sngd_refreshes": refresh_count, "sngd_failed_refreshes": failed, "local_fishers": len(layers),
                "sgd_loss": float(sgd_loss), "sngd_loss": float(sngd_loss),
            })
            print(f"{name:9s} {variant:16s} batch {args.batch}: SGD {sgd_step * 1e3:8.2f} ms/step  SNGD "
                  f"{sngd_step * 1e3:8.2f} ms/step  ratio {sngd_step / sgd_step:5.3f} (medians {sgd_median * 1e3:.2f} "
                  f"/ {sngd_median * 1e3:.2f} ms, {sngd_median / sgd_median:5.3f}); first step {sgd_times[0]:.1f} / "
                  f"{sngd_times[0]:.1f} s; {len(layers)} LocalFishers, {refresh_count} refreshes, {failed} failed; "
                  f"final loss SGD {sgd_loss:.3f}, SNGD {sngd_loss:.3f}", flush=True)
    print(f"check 3, finite training, no failed refresh: {'ok' if finite else 'FAILED'}")
    conditionals = conditional_cost() if args.checks else None
    if conditionals:
        print(f"conditional cost, 21 whitenings per call: no conditional {conditionals['none'] * 1e3:.3f} ms, "
              f"one false lax.cond per layer {conditionals['cond'] * 1e3:.3f} ms, both branches and where "
              f"{conditionals['where'] * 1e3:.3f} ms", flush=True)
    print(json.dumps({"backend": keras.backend.backend(), "device": device, "function_preserved": preserved,
                      "refresh_precision": precision_rows, "finite": finite, "rows": rows,
                      "conditional_cost_s": conditionals}))
    return 0 if preserved and precise and finite else 1


if __name__ == "__main__":
    sys.exit(main())
