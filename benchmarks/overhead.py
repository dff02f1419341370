"""Where an SNGD training step's time goes, and SNGD's wall-clock against Adam (issue #7).

Everything runs in ONE process, so that the ratios compare like with like on a shared machine: every
variant's model is built, compiled and trained one untimed epoch, then the variants' epochs are timed in
turn, round after round; each figure is the median epoch time (and, in Table 1, the ratio of the fastest
epochs, the least disturbed by other processes). An epoch is timed from its start to its end inside `fit`
(`EpochTimer`), without `fit`'s own setup and teardown, which are the same for every model. `model.compile` uses Keras's default `jit_compile="auto"` (on a
CPU-only TensorFlow: no XLA), what a user gets; `--jit-compile true` measures XLA, whose compilation of
the SNGD step takes several seconds more than SGD's (in the first epoch, so in Table 2's fit times).

    python benchmarks/overhead.py                       # the full table (about 10 minutes on 2 cores)
    python benchmarks/overhead.py --images 4000 --repeats 1 --time-to-adam-images 4000   # a quick look

Table 1, paper MLP (784-80-80-10) on real Fashion-MNIST, batch 50: epoch time as a ratio to SGD of
  bare `y = x U` (a layer that only multiplies) with a dense `U` and with the low-rank `U` that
  `rank="auto"` gives the 784-wide input (`keras_sngd.low_rank`), + the moving second moment every step
  (dense), the LocalFisher with its refresh disabled (statistics and counters), with `statistics_every=1`
  (statistics from every batch), with a dense `U` everywhere (`rank=None`), and with its defaults
  (`statistics_every="auto"`: every 4th batch before the 784-wide input; `rank="auto"`, which `reconstruct`
  passes); and the same rows
  for `small_cnn` (whose only wide Dense input is its 800-wide head). All through `reconstruct`.
Table 2, paper MLP, batch 64, 5 epochs: Adam (lr 1e-3) and SNGD (SGD lr 0.1, `reconstruct`'s defaults)
  final training losses, and the fit time (compilation included) for SNGD (defaults, `statistics_every=1`,
  a dense `U`, and damping 0.01 on every layer as before `reconstruct` damped the one on the raw pixels,
  which also keeps its `U` dense) to reach Adam's final loss, as a fraction of Adam's fit time (linear
  interpolation between epoch ends). Each model is fitted `--time-to-adam-repeats` times, in turn; the
  table gives the median, and the ratio to Adam's fit time pair by pair (the shared machine's speed drifts).
Table 3, paper MLP: the first one-batch `fit` of a fresh model (tracing, graph optimization, one step)
  for SGD, Adam and SNGD (median of `--compile-repeats`, in turn), and the number of operations in each
  traced train step.
"""

import argparse
import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_sngd import LocalFisher
from keras_sngd import reconstruct
from keras_sngd.bench.training import EpochClock
from keras_sngd.datasets import load_dataset
from keras_sngd.models import paper_mlp
from keras_sngd.models import small_cnn


class BareProduct(LocalFisher):
    """Only `y = x U` with a dense `U`: the floor of the dense design."""

    def __init__(self, **kwargs):
        kwargs["max_step"] = None  # no trust region: its state would go unused by this `call`
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        return self._transform(inputs, self.inverse_root.value, None)


class BareLowRank(BareProduct):
    """Only `y = x U`, with `U` low rank plus identity where `rank="auto"` chooses it (`keras_sngd.low_rank`)."""

    def call(self, inputs, training=None, mask=None):
        return self._transform(inputs, self.inverse_root.value, None, self._current_root())


class MomentOnly(BareProduct):
    """`y = x U` plus the moving second moment every step, nothing else."""

    def call(self, inputs, training=None, mask=None):
        if training:
            rows = ops.reshape(ops.cast(inputs, "float32"), (-1, inputs.shape[-1]))
            moment = ops.matmul(ops.transpose(rows), rows) / ops.cast(ops.shape(rows)[0], "float32")
            self.second_moment.assign(self.momentum * self.second_moment.value + (1 - self.momentum) * moment)
        return self._transform(inputs, self.inverse_root.value, None)


class NoRefresh(LocalFisher):
    """The LocalFisher's training step with the refresh switched off (statistics and counters)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._refresh_outside_step = True


class DenseRoot(LocalFisher):
    """The LocalFisher defaults but `rank=None`: a dense `U` everywhere (before `rank="auto"`). It
    overrides the `rank="auto"` that `reconstruct` passes."""

    def __init__(self, **kwargs):
        kwargs["rank"] = None
        super().__init__(**kwargs)


class EveryBatch(LocalFisher):
    """The LocalFisher defaults but `statistics_every=1`: the moving moments take every batch (the default,
    "auto", takes every 4th before the MLP's 784-wide input)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("statistics_every", 1)
        super().__init__(**kwargs)


VARIANTS = {"bare y = x U, dense U": BareProduct, "bare y = x U, low-rank U where 'auto'": BareLowRank,
            "+ moment every step (dense U)": MomentOnly, "LocalFisher, no refresh": NoRefresh,
            "LocalFisher, statistics_every=1": EveryBatch, "LocalFisher, dense U (rank=None)": DenseRoot,
            "LocalFisher defaults": LocalFisher}


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
_jit_compile = "auto"


def fit(model, optimizer, data, batch_size, epochs):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=_jit_compile)
    clock = EpochClock()
    history = model.fit(*data, batch_size=batch_size, epochs=epochs, callbacks=[clock], verbose=0, shuffle=True)
    return history.history["loss"], clock.epoch_ends


def build(builder, layer_class, data, local_fisher_arguments=None):
    keras.utils.set_random_seed(0)
    plain = builder(input_shape=data[0].shape[1:])
    if layer_class is None:
        return plain
    return reconstruct(plain, layer_class=layer_class, local_fisher_arguments=local_fisher_arguments)


class EpochTimer(keras.callbacks.Callback):
    """`seconds`: the time from the start to the end of the (one) epoch of a `fit` call.

    It leaves out what `fit` does before the first epoch and after the last (building the `tf.data`
    iterator from the arrays, releasing it): the same Keras code for every model, paid once per `fit`, which
    on the development machine took either nothing or about 0.6 s at random, and dominated the spread of
    whole-`fit` timings of one-epoch calls (`small_cnn`: 0.64 to 1.31 s per call for the same model).
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def epoch_ratios(builder, data, variants, args):
    """Epoch time of each variant and of SGD: every model is built and compiled once and trained one
    untimed epoch (compilation, first refreshes), then the variants' epochs are timed in turn (`EpochTimer`),
    `repeats` x `epochs - 1` rounds, so that a slow spell of the shared machine hits every variant alike.
    Returns `{name: (median seconds, median ratio to SGD, min ratio to SGD)}`."""
    models = {}
    for name in ["SGD"] + list(variants):
        model = build(builder, None if name == "SGD" else variants[name], data, args.local_fisher)
        model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=_jit_compile)
        model.fit(*data, batch_size=args.batch_size, epochs=1, verbose=0)
        models[name] = model
    times = {name: [] for name in models}
    for _ in range(args.repeats * max(args.epochs - 1, 1)):
        for name, model in models.items():
            timer = EpochTimer()
            model.fit(*data, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
            times[name].append(timer.seconds)
    sgd_median, sgd_min = statistics.median(times["SGD"]), min(times["SGD"])
    return {name: (statistics.median(values), statistics.median(values) / sgd_median, min(values) / sgd_min)
            for name, values in times.items()}


def first_call(builder, layer_class, optimizer, data):
    """Seconds of the first one-batch `fit` (tracing, graph optimization and one step) of a fresh model,
    and the operations of its traced train step (TensorFlow only, else None): `(top-level graph, the
    functions it calls)`, the functions being the branches of conditionals and the bodies of loops."""
    model = build(builder, layer_class, data)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=_jit_compile)
    batch = (data[0][:64], data[1][:64])
    start = time.perf_counter()
    model.fit(*batch, batch_size=64, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    operations = None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        specs = (tf.TensorSpec((64,) + batch[0].shape[1:], "float32"), tf.TensorSpec((64,), batch[1].dtype))
        graph = tf.function(model.train_step).get_concrete_function(specs).graph
        library = sum(len(function.node_def) for function in graph.as_graph_def().library.function)
        operations = (len(graph.get_operations()), library)
    return seconds, operations


def print_rows(rows):
    print("| variant | s/epoch (median) | ratio to SGD (median) | ratio (fastest epochs) |\n|---|---|---|---|")
    for name, (seconds, ratio, fastest) in rows.items():
        print(f"| {name} | {seconds:.2f} | {ratio:.2f} | {fastest:.2f} |", flush=True)


def time_to_reach(losses, ends, target):
    """Fit time at which the per-epoch loss first reaches `target`, interpolated between epoch ends."""
    points = list(zip([0.0] + ends, [float("inf")] + losses))
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l1 <= target:
            if not np.isfinite(l0):
                return t1
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return float("nan")


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="training images for table 1's MLP rows")
    parser.add_argument("--cnn-images", type=int, default=5000, help="training images for the small_cnn row")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per table-1 run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--time-to-adam-images", type=int, default=20000)
    parser.add_argument("--time-to-adam-epochs", type=int, default=5)
    parser.add_argument("--time-to-adam-repeats", type=int, default=3, help="fits of each model for table 2")
    parser.add_argument("--compile-repeats", type=int, default=3, help="first fits of each model for table 3")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: mlp, cnn, adam, compile")
    parser.add_argument("--update-every", type=int, default=None, help="LocalFisher update_every (default: the layer's)")
    parser.add_argument("--jit-compile", choices=sorted(JIT_COMPILE), default="auto",
                        help="model.compile's jit_compile; 'auto', Keras's default, is no XLA on a CPU-only TensorFlow")
    args = parser.parse_args(argv)
    args.skip = set(filter(None, args.skip.split(",")))
    args.local_fisher = {} if args.update_every is None else {"update_every": args.update_every}
    return args


def main(argv=None):
    global _jit_compile
    args = parse_arguments(argv)
    _jit_compile = JIT_COMPILE[args.jit_compile]
    images, labels = load_dataset("fashion_mnist", "train")
    images = images.astype("float32") / 255.0
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}; LocalFisher {args.local_fisher or 'defaults'}; "
          f"jit_compile={args.jit_compile}")
    if "mlp" not in args.skip:
        data = (images[: args.images], labels[: args.images])
        rows = epoch_ratios(paper_mlp, data, VARIANTS, args)
        print(f"\npaper MLP, {args.images} images, batch {args.batch_size}: steady epoch time and ratio to SGD")
        print_rows(rows)
    if "cnn" not in args.skip:
        data = (images[: args.cnn_images], labels[: args.cnn_images])
        rows = epoch_ratios(small_cnn, data, VARIANTS, args)
        print(f"\nsmall_cnn, {args.cnn_images} images, batch {args.batch_size}: steady epoch time and ratio to SGD")
        print_rows(rows)
    if "compile" not in args.skip:
        data = (images[:256], labels[:256])
        print("\npaper MLP: the first one-batch fit of a fresh model (trace, graph optimization, one step), and the "
              "operations in its traced train step: its top-level graph + the functions it calls (branches, loop bodies)")
        print("| | first fit s: median (min-max) | operations |\n|---|---|---|")
        candidates = [("SGD", None, lambda: keras.optimizers.SGD(0.1)),
                      ("Adam", None, lambda: keras.optimizers.Adam(1e-3)),
                      ("SNGD", LocalFisher, lambda: keras.optimizers.SGD(0.1))]
        results = {label: [] for label, _, _ in candidates}
        for _ in range(args.compile_repeats):  # in turn, so that a slow spell hits every one alike
            for label, layer_class, optimizer in candidates:
                results[label].append(first_call(paper_mlp, layer_class, optimizer(), data))
        for label, values in results.items():
            operations = values[0][1]
            seconds = [value[0] for value in values]
            operations = "n/a" if operations is None else f"{operations[0]} + {operations[1]}"
            print(f"| {label} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
                  f"{operations} |", flush=True)
    if "adam" not in args.skip:
        data = (images[: args.time_to_adam_images], labels[: args.time_to_adam_images])
        epochs = args.time_to_adam_epochs
        runs = {
            "SNGD SGD lr 0.1": (LocalFisher, args.local_fisher),
            "SNGD SGD lr 0.1, statistics_every=1": (EveryBatch, args.local_fisher),
            "SNGD SGD lr 0.1, dense U (rank=None)": (DenseRoot, args.local_fisher),
            # Before `reconstruct` damped the layer on the raw pixels (docs/generalization.md).
            "SNGD SGD lr 0.1, damping 0.01 everywhere": (LocalFisher, dict(args.local_fisher, damping=0.01)),
        }
        adam, curves = time_to_adam(data, epochs, runs, args.time_to_adam_repeats)
        adam_losses, adam_ends = adam[0]
        adam_time = statistics.median(ends[-1] for _, ends in adam)
        print(f"\npaper MLP, {args.time_to_adam_images} images, batch 64, {epochs} epochs (fit time, compilation "
              f"included; median of {args.time_to_adam_repeats} fits of each, run in turn)")
        print("| | final loss | fit time s | time to Adam's final loss | its ratio to Adam's fit time, "
              "pair by pair: median (min-max) |\n|---|---|---|---|---|")
        print(f"| Adam lr 1e-3 | {adam_losses[-1]:.4f} | {adam_time:.1f} | | |")
        for label, fits in curves.items():
            losses = fits[0][0]
            reaches = [time_to_reach(run_losses, ends, adam_losses[-1]) for run_losses, ends in fits]
            pairs = [reach / adam_fit[1][-1] for reach, adam_fit in zip(reaches, adam)]
            print(f"| {label} | {losses[-1]:.4f} ({losses[-1] / adam_losses[-1]:.2f}x Adam's) | "
                  f"{statistics.median(ends[-1] for _, ends in fits):.1f} | {statistics.median(reaches):.1f} s | "
                  f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f}) |")
        print("per-epoch losses: Adam " + " ".join(f"{x:.4f}" for x in adam_losses) + "".join(
            f"; {label} " + " ".join(f"{x:.4f}" for x in fits[0][0]) for label, fits in curves.items()))
        print("epoch ends (s), first fit: Adam " + " ".join(f"{x:.1f}" for x in adam_ends) + "".join(
            f"; {label} " + " ".join(f"{x:.1f}" for x in fits[0][1]) for label, fits in curves.items()), flush=True)


def time_to_adam(data, epochs, runs, repeats):
    """`repeats` rounds of fresh fits, Adam's and then each SNGD run's, so that a slow spell of the shared
    machine hits every one alike. Returns `(adam, curves)`: Adam's `(losses, epoch ends)` per round, and
    `{label: [(losses, epoch ends) per round]}`. The losses repeat exactly (the same seed and data order)."""
    adam, curves = [], {label: [] for label in runs}
    for _ in range(repeats):
        adam.append(fit(build(paper_mlp, None, data), keras.optimizers.Adam(1e-3), data, 64, epochs))
        for label, (layer_class, arguments) in runs.items():
            curves[label].append(
                fit(build(paper_mlp, layer_class, data, arguments), keras.optimizers.SGD(0.1), data, 64, epochs))
    return adam, curves


if __name__ == "__main__":
    main()
