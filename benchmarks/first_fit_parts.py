"""What each part of a LocalFisher adds to a new process's first `fit` of the paper's MLP (issue #7).

The time to Adam's loss counts the first `fit`'s tracing and graph compilation, and there SNGD pays most
of its gap to Adam. This prints, for SGD, Adam and SNGD with parts of the LocalFisher switched off, the
wall-clock time of the first `fit` (12 batches of 64 real Fashion-MNIST images, tracing, compilation and
the first due refresh included) and of a second one (the steady cost of 12 batches), each model in a new
process (`benchmarks.fresh_process`), medians of `--repeats`, with the time the first fit spent in Python's
full (generation 2) garbage collections, which tracing's many new objects trigger:

- `SNGD` (`reconstruct`'s defaults);
- `no trust region`: `max_step=None` (no carriers handed to the optimizer, no constraint);
- `no drift check`: `refresh_tolerance=0` (every check refreshes: one conditional less);
- `statistics every batch`: `statistics_every=1` (no conditional around the statistics);
- `no refresh`: `update_every` beyond the run (the refresh is traced but never runs);
- `bare`: all four;
- `no refresh in the step`: defaults, but the step holds no refresh at all (the flag
  `keras_sngd.FunctionPreservingRefresh` sets on JAX, set by hand here: the layers then never refresh);
  what the statistics, the whitening and the trust region cost alone.

    python benchmarks/first_fit_parts.py [--repeats 3] [--variants SGD,Adam,SNGD] [--grappler off]
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.fresh_process import run_fresh  # noqa: E402

NEVER = 10**6
VARIANTS = {
    "SGD": None,
    "Adam": None,
    "SNGD": {},
    "no trust region": {"max_step": None},
    "no drift check": {"refresh_tolerance": 0.0},
    "statistics every batch": {"statistics_every": 1},
    "no refresh": {"update_every": NEVER},
    "bare": {"max_step": None, "refresh_tolerance": 0.0, "statistics_every": 1, "update_every": NEVER},
    "no refresh in the step": {},
}


def first_fits(label, data_dir, batches=12, grappler=True):
    """`(first fit seconds, second fit seconds)` of a fresh paper MLP trained as `label` says (with
    TensorFlow's graph optimizer Grappler switched off where `grappler` is False)."""
    import time

    import keras

    if not grappler and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

    import keras_sngd
    from keras_sngd.datasets import load_dataset
    from keras_sngd.models import paper_mlp

    images, labels = load_dataset("fashion_mnist", "train", data_dir=data_dir)
    rows = 64 * batches
    images, labels = images[:rows].reshape(rows, 784).astype("float32") / 255.0, labels[:rows]
    keras.utils.set_random_seed(0)
    model = paper_mlp(input_shape=(784,))
    if label == "Adam":
        optimizer = keras.optimizers.Adam(1e-3)
    else:
        optimizer = keras.optimizers.SGD(0.1)
        if label != "SGD":
            model = keras_sngd.reconstruct(model, local_fisher_arguments=dict(VARIANTS[label]))
            if label == "no refresh in the step":
                for layer in model.layers:
                    if isinstance(layer, keras_sngd.LocalFisher):
                        object.__setattr__(layer, "_refresh_outside_step", True)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    import gc

    collecting = []

    def full_collections(phase, info):  # the time of Python's full (generation 2) garbage collections
        if info["generation"] == 2:
            collecting.append((phase, time.perf_counter()))

    times = []
    gc.callbacks.append(full_collections)
    try:
        for _ in range(2):
            start = time.perf_counter()
            model.fit(images, labels, batch_size=64, epochs=1, verbose=0, shuffle=False)
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                first_collections = list(collecting)
    finally:
        gc.callbacks.remove(full_collections)
    starts = [moment for phase, moment in first_collections if phase == "start"]
    stops = [moment for phase, moment in first_collections if phase == "stop"]
    return (*times, sum(stop - begin for begin, stop in zip(starts, stops)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--grappler", choices=("on", "off"), default="on",
                        help="TensorFlow's graph optimizer (off: how much of the first fit it takes)")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.variants.split(",") if label.strip()]
    unknown = [label for label in labels if label not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
    import keras

    print(f"paper MLP, first fit of a new process (12 batches of 64), medians of {args.repeats}; keras "
          f"{keras.__version__}, backend {keras.backend.backend()}; Grappler {args.grappler}")
    print("| run | LocalFisher arguments | first fit (s) | second fit (s) | full garbage collections in the first fit (s) |")
    print("|---|---|---|---|---|")
    for label in labels:
        fits = [run_fresh(first_fits, label, args.data_dir, 12, args.grappler == "on") for _ in range(args.repeats)]
        first = statistics.median(fit[0] for fit in fits)
        second = statistics.median(fit[1] for fit in fits)
        collections = statistics.median(fit[2] for fit in fits)
        arguments = "" if VARIANTS[label] is None else (repr(VARIANTS[label]) if VARIANTS[label] else "defaults")
        print(f"| {label} | {arguments} | {first:.2f} | {second:.2f} | {collections:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
