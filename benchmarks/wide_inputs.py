"""What `reconstruct` costs on `keras.applications.VGG16()` at its default 224x224 input, whose `fc1` reads
25,088 features, with and without the width limit (`reconstruct(max_features=...)`, keras_sngd.width).

Each variant runs in a new process (`benchmarks/fresh_process.py`): build `VGG16(weights=None)`, then

- `plain`: the model itself, trained with SGD;
- `default`: `keras_sngd.reconstruct(model)` (`max_features=8192`: `fc1` stays plain, with a StepBound);
- `none`: `keras_sngd.reconstruct(model, max_features=None)` (a LocalFisher before `fc1` too),

then `--steps` training steps of `SGD(0.01)` on a batch of `--batch` random images (the LocalFishers
refresh first at step 10). It prints the time `reconstruct` took, the process's peak memory after it and
at the end, the first step's time (the trace), the median of the other steps and the slowest of them (a
refresh), or how the process ended when it did not finish (a process the kernel kills for memory ends
with signal 9).

    python benchmarks/wide_inputs.py                       # plain and default: about 3 minutes on 2 cores
    python benchmarks/wide_inputs.py --variants none       # 5 to 6 minutes, and 23 GB: run it alone

Results: `benchmarks/results/wide_inputs.txt`.
"""

import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fresh_process import run_fresh  # noqa: E402

VARIANTS = {"plain": None, "default": {}, "none": {"max_features": None}}


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def one(variant, steps, batch):
    """Runs one variant in this process; returns a dict of figures."""
    import keras
    import numpy as np

    import keras_sngd

    model = keras.applications.VGG16(weights=None)
    result = {"variant": variant}
    arguments = VARIANTS[variant]
    if arguments is not None:
        start = time.perf_counter()
        model, report = keras_sngd.reconstruct(model, return_report=True, **arguments)
        result["reconstruct_s"] = time.perf_counter() - start
        result["local_fishers"] = len(report.inserted)
        result["skipped"] = [f"{path}: {reason}" for path, _, reason in report.skipped]
    result["peak_after_build_gb"] = _peak_gb()
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 224, 224, 3), dtype="float32")
    y = rng.integers(0, 1000, batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
        print(f"  {variant} step {len(times) - 1}: {times[-1]:.1f} s", flush=True)
    result["first_step_s"] = times[0]
    result["median_step_s"] = statistics.median(times[1:])
    result["slowest_later_step_s"] = max(times[1:])
    result["peak_gb"] = _peak_gb()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="plain,default", help=f"comma-separated, among {sorted(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    import keras

    print(f"keras.applications.VGG16(weights=None), 224x224, batch {args.batch}, {args.steps} steps of SGD; "
          f"keras {keras.__version__}, backend {keras.backend.backend()}; each variant in a new process")
    print("| variant | reconstruct s | LocalFishers | peak memory after build GB | first step s | median step s "
          "| slowest later step s | peak memory GB |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        try:
            r = run_fresh(one, variant, args.steps, args.batch)
        except Exception as error:  # a process killed for memory: BrokenProcessPool
            lines = str(error).splitlines()
            said = [lines[0]] if lines else []
            said += [line.strip() for line in lines if line.strip().startswith("OOM when allocating")]
            print(f"| {variant} | did not finish: {type(error).__name__}: {' '.join(said)} |", flush=True)
            continue
        print(f"| {variant} | {r.get('reconstruct_s', 0):.1f} | {r.get('local_fishers', 0)} | "
              f"{r['peak_after_build_gb']:.1f} | {r['first_step_s']:.1f} | {r['median_step_s']:.2f} | "
              f"{r['slowest_later_step_s']:.1f} | {r['peak_gb']:.1f} |", flush=True)
        for line in r.get("skipped", []):
            print(f"  skipped: {line}")


if __name__ == "__main__":
    main()
