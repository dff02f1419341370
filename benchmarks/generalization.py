"""Test accuracy after 5 epochs on the whole of Fashion-MNIST: SNGD against Adam and Muon (issue #8).

For each model and seed, on all 60,000 real Fashion-MNIST training images (batch 64, shuffled, 5 epochs),
the final training loss and the accuracy on the 10,000 test images of each run of `--runs`:

- `Adam LR`, `Muon LR`: `keras.optimizers.Adam` / `keras.optimizers.Muon` (which uses Adam for the
  variables that are not matrices) at that learning rate, Keras's defaults otherwise (Muon's include
  `weight_decay=0.1`);
- `SNGD LR`: `keras_sngd.reconstruct(model)` trained with `keras.optimizers.SGD(LR)`: what a user writes;
- `SNGD LR damping D` (or `update_every K`, `refresh_tolerance T`, `max_step S`): every LocalFisher with
  that argument;
- `SNGD LR fixed-feature damping D`: the LocalFishers before layers of any type that read fixed features
  (`keras_sngd.graph.reads_fixed_features`: the raw input) get `D`, the others keep their defaults; `D =
  none` turns `reconstruct`'s rule off (`keras_sngd.layer_defaults.fixed_feature_damping`, which damps those
  before Dense layers only): every layer gets the network's damping, as before the rule existed;
- `SNGD LR wd W`: with SGD's decoupled weight decay, `SGD(LR, weight_decay=W)`. It acts on the whitened
  kernel: `W' <- (1 - LR W) W'` shrinks the effective `W = U W'` by the same factor between refreshes;
- `SNGD LR momentum M` (optionally `nesterov`): `SGD(LR, momentum=M)`. The velocity lives in the whitened
  coordinates of `W'`; a refresh mixes `W'` (`W' <- A^(1/2) W'`, `A ~ I`) but not the velocity;
- `SNGD LR muon`: the reconstruction trained with `keras.optimizers.Muon(LR)` instead of SGD (Keras's
  defaults otherwise): Muon orthogonalizes each whitened kernel's momentum, Adam steps the biases;
- `SNGD LR exclude NAME`: no LocalFisher before the layer `NAME` (`reconstruct(..., exclude=...)`): plain
  SGD on that layer's kernel;
- `SNGD LR ... center 1`: every LocalFisher centers its input (`center=True`: `y = (x - mu) U`, `G` the
  covariance instead of the second moment);
- SNGD options combine, in any order: `SNGD 0.01 momentum 0.9 wd 0.001 update_every 20` (`muon` takes no
  SGD option);
- `K-FAC LR`: `keras_sngd.optimizers.KFAC` at that learning rate on `prepare_kfac(model)` (its defaults:
  momentum 0.9, KL clip 1e-4), the Kronecker-factored natural gradient with the output side `S = E[g g^T]`
  that SNGD replaces by a scalar;
- any label followed by `cosine`: the learning rate decays from LR to 0 over the run
  (`keras.optimizers.schedules.CosineDecay`), e.g. `Muon 0.003 cosine`, `SNGD 0.2 cosine`;
- any label followed by `ema`: the optimizer keeps an exponential moving average of the trainable weights
  (Keras's `use_ema=True`, momentum 0.99) and the model is evaluated with it (Keras writes it into the
  weights at the end of `fit`). After `reconstruct` it averages the whitened kernels `W'`, while `U` is
  the last one: a refresh within the average's horizon mixes coordinates, which is why the LocalFishers
  refuse it (`SNGD ... ema` stops with their ValueError);
- an SNGD label followed by `average`: the same average (momentum 0.99, every step, the first step copies)
  kept on the host for the effective weights `W = U W'` (`EffectiveAverage`), which no refresh changes;
  the test accuracy is that of `keras_sngd.fold(model)` with the averages written in.

    python benchmarks/generalization.py                  # the MLP, the default runs, 3 seeds: about 6 minutes on 2 cores
    python benchmarks/generalization.py --runs "SNGD 0.1 fixed-feature damping 0.3,SNGD 0.1 damping 1"
    python benchmarks/generalization.py --models cnn_bn --seeds 0 --runs "Adam 0.001,Muon 0.001,SNGD 0.1"

It prints one markdown table per model, mean ± standard deviation over the seeds.
"""

import argparse
import os
import sys
import statistics
from typing import Callable
from typing import NamedTuple
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
from benchmarks.stability_common import load_subset  # noqa: E402
from benchmarks.stability_common import plain_model  # noqa: E402
from keras_sngd.consumers import consumer_bindings  # noqa: E402
from keras_sngd.graph import calls_read_fixed_features  # noqa: E402
from keras_sngd.graph import walk_layers  # noqa: E402
from keras_sngd.layer_defaults import default_arguments  # noqa: E402

DEFAULT_RUNS = ("Adam 0.001,Adam 0.003,Muon 0.001,Muon 0.003,SNGD 0.1,SNGD 0.1 fixed-feature damping none")


# `SNGD LR NAME VALUE`: every LocalFisher with that argument.
def _flag(text):
    if text not in ("0", "1"):
        raise ValueError(text)
    return text == "1"


_LOCAL_FISHER_OPTIONS = {"damping": float, "update_every": int, "refresh_tolerance": float, "max_step": float,
                         "center": _flag}


class Run(NamedTuple):
    """What a run label asks for: `optimizer(decay_steps=None)` makes the optimizer (a cosine schedule
    over `decay_steps` for labels ending in `cosine`); `reconstruct_arguments(model)` gives
    `keras_sngd.reconstruct`'s arguments (None: the model is not reconstructed); `prepare(model)` gives the
    model to fit for K-FAC (None otherwise)."""

    optimizer: Callable
    reconstruct_arguments: Optional[Callable]
    prepare: Optional[Callable] = None
    average: bool = False


def parse_run(label):
    """The `Run` of a run label (see the module docstring)."""
    words = label.split()
    suffixes = set()
    while words and words[-1] in ("cosine", "ema", "average"):
        suffixes.add(words.pop())
    cosine, ema, average = ("cosine" in suffixes), ("ema" in suffixes), ("average" in suffixes)
    if average and (ema or not words or words[0] != "SNGD"):
        raise ValueError(f"Bad run {label!r}: 'average' is for SNGD runs, without 'ema'.")
    try:
        name, rate, rest = words[0], float(words[1]), words[2:]
    except (IndexError, ValueError):
        raise ValueError(f"Bad run {label!r}: expected 'Adam LR', 'Muon LR', 'K-FAC LR' or 'SNGD LR [...]', "
                         "optionally followed by 'cosine', 'ema' or (SNGD) 'average'.") from None

    averaging = {"use_ema": True} if ema else {}

    def learning_rate(decay_steps):
        if cosine and decay_steps:
            return keras.optimizers.schedules.CosineDecay(rate, decay_steps)
        return rate

    if name in ("Adam", "Muon") and not rest:
        make = keras.optimizers.Adam if name == "Adam" else keras.optimizers.Muon
        return Run(lambda decay_steps=None: make(learning_rate=learning_rate(decay_steps), **averaging), None)
    if name == "K-FAC" and not rest:
        from keras_sngd.optimizers import KFAC
        from keras_sngd.optimizers import prepare_kfac

        return Run(lambda decay_steps=None: KFAC(learning_rate=learning_rate(decay_steps), **averaging), None, prepare_kfac)
    if name != "SNGD":
        raise ValueError(f"Bad run {label!r}: expected 'Adam LR', 'Muon LR', 'K-FAC LR' or 'SNGD LR [...]'.")

    # The words after `SNGD LR` are options, in any order and combined: `wd W`, `momentum M`, `nesterov`,
    # a LocalFisher argument `NAME V` for every layer, `fixed-feature damping D|none`.
    sgd_options, local_fisher, fixed, base, excluded = {}, {}, None, "sgd", []
    bad = ValueError(f"Bad run {label!r}: after 'SNGD LR' expected options among 'wd W', 'momentum M', "
                     "'nesterov', 'muon', a LocalFisher argument ('damping D', 'update_every K', "
                     "'refresh_tolerance T', 'max_step S', 'center 0|1'), 'exclude LAYER' (no LocalFisher before that layer) "
                     "and 'fixed-feature damping D|none'.")
    words = list(rest)
    try:
        while words:
            word = words.pop(0)
            if word == "wd":
                sgd_options["weight_decay"] = float(words.pop(0))
            elif word == "momentum":
                sgd_options["momentum"] = float(words.pop(0))
            elif word == "nesterov":
                sgd_options["nesterov"] = True
            elif word == "muon":
                base = "muon"
            elif word == "exclude":
                excluded.append(words.pop(0))
            elif word in _LOCAL_FISHER_OPTIONS:
                local_fisher[word] = _LOCAL_FISHER_OPTIONS[word](words.pop(0))
            elif word == "fixed-feature" and words.pop(0) == "damping":
                fixed = words.pop(0)
                fixed = fixed if fixed == "none" else float(fixed)
            else:
                raise bad
    except (IndexError, ValueError):
        raise bad from None
    if sgd_options.get("nesterov") and not sgd_options.get("momentum"):
        raise bad
    if base == "muon" and sgd_options:
        raise bad

    def arguments(model):
        result = {"local_fisher_arguments": dict(local_fisher)} if local_fisher else {}
        if excluded:
            result["exclude"] = tuple(excluded)
        if fixed == "none":
            damping = local_fisher.get("damping", default_arguments(model).get("damping", 0.01))
            result["local_fisher_arguments"] = dict(local_fisher, damping=damping)
        elif fixed is not None:
            layers = {layer.name: layer for _, layer in walk_layers(model)}
            _, report = keras_sngd.reconstruct(model, return_report=True, **result)
            # (A recurrent layer's state, `layer/state`, is no layer's input from the data.)
            names = [path.split("/")[-1] for path, _, _, _, _ in report.inserted]
            result["per_layer_arguments"] = {name: {"damping": fixed} for name in names
                                             if name in layers and calls_read_fixed_features(layers[name])}
        return result

    if base == "muon":
        return Run(lambda decay_steps=None: keras.optimizers.Muon(learning_rate=learning_rate(decay_steps), **averaging),
                   arguments, average=average)
    return Run(lambda decay_steps=None: keras.optimizers.SGD(learning_rate(decay_steps), **sgd_options, **averaging),
               arguments, average=average)


class EffectiveAverage(keras.callbacks.Callback):
    """Keras's weight average (`use_ema`, momentum 0.99, the first step copies), kept on the host for the
    effective weights of a reconstruction: `W = U W'` for each whitened kernel (`binding.mix(U)`, what
    `fold` absorbs), the other trainable weights as they are. A refresh changes `U` and `W'` but not `W`,
    so this average does not mix coordinate systems, as an average of `W'` would (the reason the
    LocalFishers refuse `use_ema`). `folded()` is `keras_sngd.fold(model)` with the averages written in."""

    def __init__(self, momentum=0.99):
        super().__init__()
        self.momentum = momentum

    def on_train_begin(self, logs=None):
        self.pairs = [(fisher, binding) for _, fisher in walk_layers(self.model)
                      if isinstance(fisher, keras_sngd.LocalFisher)
                      for binding in consumer_bindings(fisher, self.model).bindings]
        whitened = {id(binding.kernel) for _, binding in self.pairs}
        self.others = [v for v in self.model.trainable_variables if id(v) not in whitened]
        self.kernels, self.values = None, None

    def on_train_batch_end(self, batch, logs=None):
        kernels = [np.asarray(binding.mix(keras.ops.convert_to_numpy(fisher.inverse_root)))
                   for fisher, binding in self.pairs]
        values = [keras.ops.convert_to_numpy(v) for v in self.others]
        if self.kernels is None:
            self.kernels, self.values = kernels, values
        else:
            m = self.momentum
            self.kernels = [m * a + (1 - m) * k for a, k in zip(self.kernels, kernels)]
            self.values = [m * a + (1 - m) * v for a, v in zip(self.values, values)]

    def folded(self):
        folded = keras_sngd.fold(self.model)
        for (_, binding), kernel in zip(self.pairs, self.kernels):
            folded.get_layer(binding.layer.name).kernel.assign(kernel)
        by_path = {v.path: v for v in folded.trainable_variables}
        for variable, value in zip(self.others, self.values):
            if variable.path in by_path:  # (not the LocalFishers' own hand-over carriers)
                by_path[variable.path].assign(value)
        return folded


def run(model_name, label, seed, train, test, epochs):
    """`(final training loss, test accuracy)` of one run."""
    spec = parse_run(label)
    keras.utils.set_random_seed(seed)
    model = plain_model(model_name)
    if spec.reconstruct_arguments is not None:
        model = keras_sngd.reconstruct(model, **spec.reconstruct_arguments(model))
    if spec.prepare is not None:
        model = spec.prepare(model)
    optimizer = spec.optimizer(decay_steps=epochs * -(-len(train[0]) // 64))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    callbacks = [EffectiveAverage()] if spec.average else []
    loss = model.fit(*train, batch_size=64, epochs=epochs, verbose=0, callbacks=callbacks).history["loss"][-1]
    if spec.average:
        model = callbacks[0].folded()
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    accuracy = model.evaluate(*test, batch_size=512, verbose=0, return_dict=True)["accuracy"]
    return (loss if np.isfinite(loss) else float("nan")), accuracy


def _cell(values, digits):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp", help="comma-separated keras_sngd.models.REFERENCE_MODELS names")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60000, help="training images (the first N)")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated run labels (default: {DEFAULT_RUNS})")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.runs.split(",") if label.strip()]
    for label in labels:
        try:
            parse_run(label)
        except ValueError as error:
            parser.error(f"--runs: {error}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    train, test = load_subset(args.samples), load_subset(10000, "test")
    for model_name in args.models.split(","):
        print(f"\n{model_name}: {len(train[0])} training images, batch 64, {args.epochs} epochs, seeds {args.seeds}; "
              f"keras {keras.__version__}, backend {keras.backend.backend()}")
        print("| run | test accuracy | final training loss | per seed (test accuracy) |\n|---|---|---|---|")
        for label in labels:
            results = [run(model_name, label, seed, train, test, args.epochs) for seed in seeds]
            losses, accuracies = [r[0] for r in results], [r[1] for r in results]
            print(f"| {label} | {_cell(accuracies, 4)} | {_cell(losses, 4)} | "
                  + " ".join(f"{a:.4f}" for a in accuracies) + " |", flush=True)


if __name__ == "__main__":
    main()
