"""The first `fit` on the JAX backend: what the LocalFishers add to tracing and XLA's compilation.

On JAX the train step is one XLA program, and every LocalFisher's statistics and refresh are compiled
into it (no compiled function is shared between layers there: `keras_sngd.compiled`). For the paper MLP
(784-80-80-10, 12 batches of 64) and `keras.applications.MobileNetV2` (alpha 0.35, 32x32x3, no top, 2
batches of 8, SGD on MSE), each in a new process, this prints the first and the second `fit`'s seconds
and JAX's own durations (tracing, lowering, XLA compilation summed over its compilations) for:

- `plain`: the model as built (SGD 0.1 for the MLP);
- `reconstruct`: `keras_sngd.reconstruct(model)`, the default in-step refresh;
- `no refresh in the step`: the same with the refresh left out of the step (the flag that
  `keras_sngd.FunctionPreservingRefresh` sets; its statistics, whitening and trust region only).

    KERAS_BACKEND=jax python benchmarks/jax_first_fit.py [--models mlp,mobilenet_v2] [--repeats 1]
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "reconstruct", "no refresh in the step")


def one(model_name, variant):
    """In this process: `{first, second, trace, lower, compile}` seconds."""
    sys.path.insert(0, ROOT)
    import jax
    import keras
    import numpy as np

    import keras_sngd
    from keras_sngd.models import paper_mlp

    durations = collections.defaultdict(float)

    def listener(event, duration, **_):
        durations[event.rsplit("/", 1)[-1]] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if model_name == "mlp":
        model = paper_mlp(input_shape=(784,))
        x, y, batch = rng.random((12 * 64, 784), "float32"), rng.integers(0, 10, 12 * 64), 64
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                               weights=None, pooling="avg")
        x, batch, loss = rng.random((16, 32, 32, 3), "float32"), 8, "mse"
        y = rng.random((16, model.output_shape[-1]), "float32")
    if variant != "plain":
        model = keras_sngd.reconstruct(model)
        if variant == "no refresh in the step":
            for layer in model._flatten_layers():
                if isinstance(layer, keras_sngd.LocalFisher):
                    layer._refresh_outside_step = True
    model.compile(keras.optimizers.SGD(0.1 if model_name == "mlp" else 0.01), loss)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    first = time.perf_counter() - start
    phases = dict(durations)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    second = time.perf_counter() - start
    return {"first": first, "second": second, "trace": phases.get("jaxpr_trace_duration", 0.0),
            "lower": phases.get("jaxpr_to_mlir_module_duration", 0.0),
            "compile": phases.get("backend_compile_duration", 0.0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,mobilenet_v2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return 0
    environment = dict(os.environ, KERAS_BACKEND="jax")
    import keras  # noqa: F401  (the version line below)
    import jax

    print(f"JAX {jax.__version__} ({jax.devices()[0].platform}), each fit in a new process; medians of {args.repeats}")
    print("| model | variant | first fit s | second fit s | tracing s | lowering s | XLA compilation s (summed) |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        for variant in VARIANTS:
            rows = []
            for _ in range(args.repeats):
                result = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", model_name, variant],
                                        capture_output=True, text=True, env=environment, check=False)
                if result.returncode != 0:
                    raise SystemExit(result.stderr[-2000:])
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            median = {key: sorted(row[key] for row in rows)[len(rows) // 2] for key in rows[0]}
            print(f"| {model_name} | {variant} | {median['first']:.1f} | {median['second']:.2f} | {median['trace']:.2f} | "
                  f"{median['lower']:.2f} | {median['compile']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
