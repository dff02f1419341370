"""What the LocalFishers add to the compilation of a large network's train step (TensorFlow; issue #7).

Every LocalFisher adds its statistics and its refresh (a conditional with the warm-started Newton-Schulz
loop, the drift check and the consumers' re-expression) to the compiled train step, so a network with
many of them pays for them once, in the first step of every `fit` call. For
`keras.applications.MobileNetV2` (alpha 0.35, 32x32x3 inputs, no top; 35 LocalFishers) and a plain
`SGD` step on an MSE loss, this prints, for the plain network, the reconstructed one with its refresh
switched off (`benchmarks/overhead.py`'s `NoRefresh`: statistics and counters only) and the reconstructed
one as `reconstruct` makes it:

- the seconds to trace `train_step` into a graph (`tf.function(...).get_concrete_function`);
- the seconds of its first call (TensorFlow's graph optimization and one step), of its second, and of
  its first due call (step `update_every`, where the LocalFishers first refresh: the shared compiled
  refresh of `keras_sngd.compiled` is instantiated there), and the sum of trace, first and due call;
- the operations of the traced step: its top-level graph + the functions it calls (the branches of
  conditionals, the bodies of loops), and the operations created per LocalFisher while tracing.

Each figure is the median of `--repeats` rounds, the three models in turn, each measurement in a new
process (`benchmarks/fresh_process.py`: a later model of a process reuses the compiled refresh).

    python benchmarks/compile_cost.py                  # about 5 minutes on 2 cores
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.fresh_process import run_fresh  # noqa: E402
from benchmarks.overhead import NoRefresh  # noqa: E402
from keras_sngd import LocalFisher  # noqa: E402
from keras_sngd import reconstruct  # noqa: E402

BATCH = 8


def mobilenet_v2():
    return keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                          pooling="avg")


def measure(kind):
    """`(trace s, first call s, second call s, first due call s, top-level operations, function operations,
    LocalFishers)`. The first due call is the step at which the LocalFishers first refresh (step
    `update_every`; the same step number for the plain network)."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = mobilenet_v2()
    if kind != "plain":
        model = reconstruct(model, layer_class=NoRefresh if kind == "no refresh" else LocalFisher)
    fishers = sum(isinstance(layer, LocalFisher) for layer in model.layers)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    step = tf.function(lambda x, y: model.train_step((x, y)))
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (BATCH, 32, 32, 3)).astype("float32"))
    y = tf.zeros((BATCH,) + tuple(model.output.shape[1:]))
    start = time.perf_counter()
    graph = step.get_concrete_function(x, y).graph
    traced = time.perf_counter() - start
    start = time.perf_counter()
    step(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(x, y)
    second = time.perf_counter() - start
    due_step = next((layer.update_every for layer in model.layers if isinstance(layer, LocalFisher)), 10)
    for _ in range(due_step - 3):
        step(x, y)
    start = time.perf_counter()
    step(x, y)
    due = time.perf_counter() - start
    library = sum(len(function.node_def) for function in graph.as_graph_def().library.function)
    return traced, first, second, due, len(graph.get_operations()), library, fishers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        parser.error("this benchmark times TensorFlow's tracing and graph optimization: KERAS_BACKEND=tensorflow")
    kinds = ["plain", "no refresh", "LocalFisher"]
    results = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            results[kind].append(run_fresh(measure, kind))
    print(f"MobileNetV2 (alpha 0.35, 32x32x3, batch {BATCH}), SGD on MSE; keras {keras.__version__}, "
          f"median of {args.repeats} rounds")
    print("| model | LocalFishers | trace s | first call s | second call s | first due call s | trace + first + "
          "due s | operations (top level + functions) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, values in results.items():
        trace, first, second, due = (statistics.median(v[i] for v in values) for i in range(4))
        total = statistics.median(v[0] + v[1] + v[3] for v in values)
        top, library, fishers = values[0][4:]
        print(f"| {kind} | {fishers} | {trace:.2f} | {first:.2f} | {second:.3f} | {due:.2f} | {total:.2f} | "
              f"{top} + {library} |")
    plain, full = results["plain"][0], results["LocalFisher"][0]
    print(f"operations added per LocalFisher: {(full[4] + full[5] - plain[4] - plain[5]) / full[6]:.0f}")


if __name__ == "__main__":
    main()
