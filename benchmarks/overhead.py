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
    python benchmarks/overhead.py --skip mlp,cnn,compile --time-to-adam-images 60000 \
        --time-to-adam-repeats 5 --time-to-adam-runs default     # table 2 on all images, defaults only

Table 1, paper MLP (784-80-80-10) on real Fashion-MNIST, batch 50: epoch time as a ratio to SGD of
  bare `y = x U` (a layer that only multiplies) with a dense `U` and with the low-rank `U` that
  `rank="auto"` gives the 784-wide input (`keras_sngd.low_rank`), + the moving second moment every step
  (dense), the LocalFisher with its refresh disabled (statistics and counters), with `statistics_every=1`
  (statistics from every batch), with a dense `U` everywhere (`rank=None`), and with its defaults
  (`statistics_every="auto"`: every 4th batch before the 784-wide input, and `adaptive_statistics=True`
  there, which lengthens that period to 64 while `U` still whitens the pixels; `rank="auto"`; both passed
  by `reconstruct`), and the same without the adaptive period (`FixedPeriod`, the previous release); and
  the same rows
  for `small_cnn` (whose only wide Dense input is its 800-wide head). All through `reconstruct`.
Table 2, paper MLP, batch 64, 5 epochs: Adam (lr 1e-3) and SNGD (SGD lr 0.1, `reconstruct`'s defaults)
  final training losses, and the fit time (compilation included) for SNGD (defaults, `statistics_every=1`,
  a dense `U`, and damping 0.01 on every layer as before `reconstruct` damped the one on the raw pixels,
  which also keeps its `U` dense) to reach Adam's final loss: read off the per-epoch losses (linear
  interpolation between epoch ends), as a fraction of Adam's fit time; and read off the batch losses (the
  first batch at which the mean of the last 50 is at most that loss: the training loss at that time,
  without the lag of an epoch's running mean), as a fraction of Adam's own time by the same rule. Each
  model is fitted `--time-to-adam-repeats` times, in turn, each fit in a new process
  (`benchmarks.fresh_process`: a later fit of a process would reuse the refresh the first one compiled);
  the table gives the median, and the ratios pair by pair (the shared machine's speed drifts).
Table 3, paper MLP: the first `fit` of a fresh model in a new process, 12 batches (tracing, graph
  optimization and the steps, which for SNGD include its first refresh, at step 10), for SGD, Adam and
  SNGD (median of `--compile-repeats`, in turn), and the number of operations in each traced train step.
"""

import argparse
import os
import statistics
import sys
import time

# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from benchmarks.fresh_process import run_fresh  # noqa: E402
from keras_sngd import LocalFisher  # noqa: E402
from keras_sngd import reconstruct  # noqa: E402
from keras_sngd.bench.training import EpochClock  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402
from keras_sngd.models import small_cnn  # noqa: E402


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
        kwargs["adaptive_statistics"] = False
        super().__init__(**kwargs)


class FixedPeriod(LocalFisher):
    """The LocalFisher defaults but `adaptive_statistics=False`: the 784-wide input's statistics every 4th
    batch throughout, as before `reconstruct` passed `adaptive_statistics=True` for wide fixed features."""

    def __init__(self, **kwargs):
        kwargs["adaptive_statistics"] = False
        super().__init__(**kwargs)


VARIANTS = {"bare y = x U, dense U": BareProduct, "bare y = x U, low-rank U where 'auto'": BareLowRank,
            "+ moment every step (dense U)": MomentOnly, "LocalFisher, no refresh": NoRefresh,
            "LocalFisher, statistics_every=1": EveryBatch, "LocalFisher, dense U (rank=None)": DenseRoot,
            "LocalFisher, fixed statistics period (before)": FixedPeriod, "LocalFisher defaults": LocalFisher}


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
_jit_compile = "auto"


def fit(model, optimizer, data, batch_size, epochs, batches=None):
    """`(per-epoch losses, epoch ends)` of a `fit`; with a `BatchClock` as `batches`, it also records
    every batch."""
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=_jit_compile)
    clock = EpochClock()
    callbacks = [clock] if batches is None else [clock, batches]
    history = model.fit(*data, batch_size=batch_size, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=True)
    return history.history["loss"], clock.epoch_ends


class BatchClock(keras.callbacks.Callback):
    """`times`, `losses`: the seconds since `fit` began at the end of each batch and that batch's loss.

    Keras logs the mean loss of the epoch so far, `m_k` after its `k`-th batch; the batch's own loss is
    `k m_k - (k - 1) m_(k-1)`.
    """

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.times, self.losses = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._mean, self._count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._count += 1
        self.losses.append(self._count * mean - (self._count - 1) * self._mean)
        self._mean = mean
        self.times.append(time.perf_counter() - self.start)


def time_to_reach_batches(times, losses, target, window=50):
    """The first batch end at which the mean loss of the last `window` batches is at most `target` (NaN
    if never): the training loss at that time, without the lag of an epoch's running mean."""
    losses = np.asarray(losses, dtype="float64")
    if len(losses) < window:
        return float("nan")
    means = np.convolve(losses, np.ones(window) / window, mode="valid")
    reached = np.flatnonzero(means <= target)
    return float(times[reached[0] + window - 1]) if len(reached) else float("nan")


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


FIRST_FIT_BATCHES = 12
OPTIMIZERS = {"SGD": (None, lambda: keras.optimizers.SGD(0.1)), "Adam": (None, lambda: keras.optimizers.Adam(1e-3)),
              "SNGD": (LocalFisher, lambda: keras.optimizers.SGD(0.1))}


def first_fit(label, jit_compile="auto", after_another=False):
    """Run in a new process (`benchmarks.fresh_process`): the seconds of the first `fit` of a fresh paper
    MLP for `label` (a key of `OPTIMIZERS`) over 12 batches of 64 real images (tracing, graph
    optimization and 12 steps, which for SNGD include the first refresh, at step `update_every` = 10),
    and the operations of its traced train step (TensorFlow only, else None): `(top-level graph, the
    functions it calls)`, the functions being the branches of conditionals, the bodies of loops and the
    shared refresh (`keras_sngd.compiled`). With `after_another`, another fresh model of the same kind is
    fitted first, untimed: what a notebook's second model costs."""
    global _jit_compile
    _jit_compile = jit_compile
    images, labels = load_dataset("fashion_mnist", "train")
    count = 64 * FIRST_FIT_BATCHES
    data = (images[:count].astype("float32") / 255.0, labels[:count])
    layer_class, optimizer = OPTIMIZERS[label]
    if after_another:
        model = build(paper_mlp, layer_class, data)
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=_jit_compile)
        model.fit(*data, batch_size=64, epochs=1, verbose=0, shuffle=False)
    model = build(paper_mlp, layer_class, data)
    model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=_jit_compile)
    start = time.perf_counter()
    model.fit(*data, batch_size=64, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    operations = None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        specs = (tf.TensorSpec((64,) + data[0].shape[1:], "float32"), tf.TensorSpec((64,), data[1].dtype))
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
    parser.add_argument("--time-to-adam-runs", choices=("all", "default"), default="all",
                        help="table 2's SNGD runs: all variants, or only the defaults (a quicker re-measure)")
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
        print(f"\npaper MLP: the first fit of a fresh model in a new process, {FIRST_FIT_BATCHES} batches of 64 (trace, "
              "graph optimization, the steps, for SNGD its first refresh at step 10), and the operations in its traced "
              "train step: its top-level graph + the functions it calls (branches, loop bodies, the shared refresh)")
        print("| | first fit s: median (min-max) | operations |\n|---|---|---|")
        kinds = [(label, label, False) for label in OPTIMIZERS] + [
            ("SNGD, the second model of a process", "SNGD", True)]
        results = {row: [] for row, _, _ in kinds}
        for _ in range(args.compile_repeats):  # in turn, so that a slow spell hits every one alike
            for row, label, after_another in kinds:
                results[row].append(run_fresh(first_fit, label, _jit_compile, after_another))
        for label, values in results.items():
            operations = values[0][1]
            seconds = [value[0] for value in values]
            operations = "n/a" if operations is None else f"{operations[0]} + {operations[1]}"
            print(f"| {label} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
                  f"{operations} |", flush=True)
    if "adam" not in args.skip:
        epochs = args.time_to_adam_epochs
        runs = {
            "SNGD SGD lr 0.1": (LocalFisher, args.local_fisher),
            "SNGD SGD lr 0.1, fixed statistics period (before)": (FixedPeriod, args.local_fisher),
            "SNGD SGD lr 0.1, statistics_every=1": (EveryBatch, args.local_fisher),
            "SNGD SGD lr 0.1, dense U (rank=None)": (DenseRoot, args.local_fisher),
            # Before `reconstruct` damped the layer on the raw pixels (docs/generalization.md).
            "SNGD SGD lr 0.1, damping 0.01 everywhere": (LocalFisher, dict(args.local_fisher, damping=0.01)),
        }
        if args.time_to_adam_runs == "default":
            runs = {"SNGD SGD lr 0.1": runs["SNGD SGD lr 0.1"]}
        adam, curves = time_to_adam(args.time_to_adam_images, epochs, runs, args.time_to_adam_repeats)
        adam_losses, adam_ends = adam[0][:2]
        target = adam_losses[-1]
        adam_time = statistics.median(ends[-1] for _, ends, _, _ in adam)
        # The same target read off the batch losses (mean of the last 50), for Adam too: when each optimizer's
        # training loss itself, not an epoch's running mean of it, reached Adam's final (epoch-mean) loss.
        adam_batch_reach = [time_to_reach_batches(times, losses, target) for _, _, times, losses in adam]
        print(f"\npaper MLP, {args.time_to_adam_images} images, batch 64, {epochs} epochs (fit time, compilation "
              f"included; median of {args.time_to_adam_repeats} fits of each, run in turn, each in a new process). Time to Adam's final "
              "loss: by the per-epoch losses (interpolated between epoch ends), as a ratio to Adam's fit time; and "
              "by the batch losses (the first batch whose last 50 average at most that loss), as a ratio to "
              "Adam's own time by the same rule")
        print("| | final loss | fit time s | time to Adam's final loss | its ratio to Adam's fit time, "
              "pair by pair: median (min-max) | by batch losses | its ratio to Adam's, pair by pair |"
              "\n|---|---|---|---|---|---|---|")
        print(f"| Adam lr 1e-3 | {target:.4f} | {adam_time:.1f} | | | {statistics.median(adam_batch_reach):.1f} s | |")
        for label, fits in curves.items():
            losses = fits[0][0]
            reaches = [time_to_reach(run_losses, ends, target) for run_losses, ends, _, _ in fits]
            pairs = [reach / adam_fit[1][-1] for reach, adam_fit in zip(reaches, adam)]
            batch_reaches = [time_to_reach_batches(times, losses, target) for _, _, times, losses in fits]
            batch_pairs = [reach / own for reach, own in zip(batch_reaches, adam_batch_reach)]
            print(f"| {label} | {losses[-1]:.4f} ({losses[-1] / target:.2f}x Adam's) | "
                  f"{statistics.median(ends[-1] for _, ends, _, _ in fits):.1f} | {statistics.median(reaches):.1f} s | "
                  f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f}) | "
                  f"{statistics.median(batch_reaches):.1f} s | "
                  f"{statistics.median(batch_pairs):.2f}x ({min(batch_pairs):.2f}-{max(batch_pairs):.2f}) |")
        print("per-epoch losses: Adam " + " ".join(f"{x:.4f}" for x in adam_losses) + "".join(
            f"; {label} " + " ".join(f"{x:.4f}" for x in fits[0][0]) for label, fits in curves.items()))
        print("epoch ends (s), first fit: Adam " + " ".join(f"{x:.1f}" for x in adam_ends) + "".join(
            f"; {label} " + " ".join(f"{x:.1f}" for x in fits[0][1]) for label, fits in curves.items()), flush=True)


def timed_fit(images, epochs, layer_class=None, arguments=None, jit_compile="auto"):
    """Run in a new process (`benchmarks.fresh_process`): a fresh paper MLP on the first `images` real
    Fashion-MNIST images, batch 64, `epochs` epochs; Adam 1e-3 without `layer_class`, else SGD 0.1 on its
    reconstruction with `layer_class` and LocalFisher `arguments`. Returns `(per-epoch losses, epoch ends,
    batch end times, batch losses)`."""
    global _jit_compile
    _jit_compile = jit_compile
    train_images, train_labels = load_dataset("fashion_mnist", "train")
    data = (train_images[:images].astype("float32") / 255.0, train_labels[:images])
    optimizer = keras.optimizers.Adam(1e-3) if layer_class is None else keras.optimizers.SGD(0.1)
    batches = BatchClock()
    losses, ends = fit(build(paper_mlp, layer_class, data, arguments), optimizer, data, 64, epochs, batches)
    return losses, ends, batches.times, batches.losses


def time_to_adam(images, epochs, runs, repeats):
    """`repeats` rounds of fits, each in a new process (what a new user's first `fit` costs, without what
    an earlier fit of the process compiled), Adam's and then each SNGD run's, so that a slow spell of the
    shared machine hits every one alike. Returns `(adam, curves)`: Adam's `(losses, epoch ends, batch
    times, batch losses)` per round, and `{label: [the same per round]}`. The losses repeat exactly (the
    same seed and data order)."""
    adam, curves = [], {label: [] for label in runs}
    for _ in range(repeats):
        adam.append(run_fresh(timed_fit, images, epochs, jit_compile=_jit_compile))
        for label, (layer_class, arguments) in runs.items():
            curves[label].append(run_fresh(timed_fit, images, epochs, layer_class, arguments, _jit_compile))
    return adam, curves


if __name__ == "__main__":
    main()
