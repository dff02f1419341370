"""The main command: SNGD side by side with SGD, Adam, RAdam and NGD on a reference model.

    python -m keras_sngd.bench                      # MLP on Fashion-MNIST: SGD, Adam, SNGD, 5 epochs
    python -m keras_sngd.bench --model small_cnn --optimizers sgd,adam,radam,ngd,sngd --seeds 0,1,2
    python -m keras_sngd.bench --model lstm --dataset ptb --data-dir ~/ptb --epochs 10

Per optimizer (mean and spread over seeds) it prints: time per epoch (median of the epochs after the
first, which also compiles), the final training loss (Keras's mean over the last epoch), test accuracy
(perplexity for a language model), and the wall-clock time (fit time, compilation included) until the
seed-averaged epoch loss first reached the best baseline's final training loss (baselines: SGD, Adam and
RAdam; NGD only when none of them ran). `--summarize DIR` recomputes the table and plot of an earlier
run from its `results.json`, without training. It writes `results.json`,
`results.csv` and `curves.png` to `--output-dir`.
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sngd.fisher_statistics import FisherStatistics  # noqa: E402
from keras_sngd.reconstruct import reconstruct  # noqa: E402

OPTIMIZERS = ("sgd", "adam", "radam", "ngd", "sngd")
# Learning rates: SGD with momentum 0.9 and the adaptive methods at their usual values; SNGD and NGD
# use plain SGD steps (no momentum) at the rate benchmarks/defaults_sweep.py found for the MLP.
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "radam": 0.001, "ngd": 0.1, "sngd": 0.1}
LABELS = {"sgd": "SGD (momentum 0.9)", "adam": "Adam", "radam": "RAdam", "ngd": "NGD", "sngd": "SNGD"}
DATASET_FOR_MODEL = {"mlp": "fashion_mnist", "small_cnn": "fashion_mnist", "vgg16": "cifar10",
                     "resnet18": "cifar10", "lstm": "ptb"}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_sngd.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mlp", choices=sorted(DATASET_FOR_MODEL))
    parser.add_argument("--dataset", default=None, help="mnist, fashion_mnist, cifar10 or ptb (default: the model's)")
    parser.add_argument("--optimizers", default="sgd,adam,sngd", help=f"comma-separated, from {','.join(OPTIMIZERS)}")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", default="", help="per-optimizer learning rates, e.g. sgd=0.05,sngd=0.2")
    parser.add_argument("--lr-grid", default="", help="try these learning rates for every optimizer on the first "
                        "seed and keep the best final training loss, e.g. 0.3,0.1,0.03,0.01,0.003,0.001")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean and spread")
    parser.add_argument("--l2", type=float, default=0.0, help="L2 penalty on every kernel (the paper: 1e-3)")
    parser.add_argument("--samples", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--test-samples", type=int, default=None, help="use only the first N test examples")
    parser.add_argument("--sequence-length", type=int, default=35, help="language model window length")
    parser.add_argument("--lstm-layers", type=int, default=2)
    parser.add_argument("--local-fisher", default="", help="LocalFisher arguments for SNGD and NGD, e.g. "
                        "update_every=20,damping=0.03")
    parser.add_argument("--data-dir", default=None, help="local dataset files (see keras_sngd.datasets.load_dataset)")
    parser.add_argument("--output-dir", default=None, help="default: results/MODEL_DATASET")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--verbose", type=int, default=1, help="Keras progress bars: 0, 1 or 2")
    parser.add_argument("--summarize", metavar="DIR", default=None,
                        help="recompute the table and plot from DIR/results.json (no training)")
    args = parser.parse_args(argv)
    if args.summarize:
        return args

    args.dataset = args.dataset or DATASET_FOR_MODEL[args.model]
    args.optimizers = _names(args.optimizers, "--optimizers")
    args.seeds = [int(seed) for seed in _names(args.seeds, "--seeds")]
    args.learning_rates = dict(DEFAULT_LEARNING_RATES)
    for item in _names(args.lr, "--lr") if args.lr else []:
        name, _, value = item.partition("=")
        if name not in OPTIMIZERS or not value:
            parser.error(f"--lr wants NAME=RATE with NAME in {OPTIMIZERS}; got {item!r}")
        args.learning_rates[name] = float(value)
    args.lr_grid = [float(value) for value in _names(args.lr_grid, "--lr-grid")] if args.lr_grid else []
    args.local_fisher = dict(_parse_value(item) for item in _names(args.local_fisher, "--local-fisher")) if args.local_fisher else {}
    for name in args.optimizers:
        if name not in OPTIMIZERS:
            parser.error(f"unknown optimizer {name!r}; choose from {','.join(OPTIMIZERS)}")
    if (args.model == "lstm") != (args.dataset == "ptb"):
        parser.error("the lstm model goes with the ptb dataset, and only it")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    args.output_dir = args.output_dir or os.path.join("results", f"{args.model}_{args.dataset}")
    return args


def _names(text, flag):
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise SystemExit(f"{flag} is empty")
    return names


def _parse_value(item):
    key, _, value = item.partition("=")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def load_data(args):
    """`(train, test, task)`: numpy `(inputs, targets)` pairs and "classification" or "language_model"."""
    from keras_sngd.datasets import language_model_windows
    from keras_sngd.datasets import load_dataset

    if args.dataset == "ptb":
        corpus = load_dataset("ptb", data_dir=args.data_dir)
        train = language_model_windows(corpus.train, args.sequence_length)
        test = language_model_windows(corpus.test, args.sequence_length)
        task = ("language_model", len(corpus.vocabulary))
    else:
        train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
        test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
        train = (train[0].astype("float32") / 255.0, train[1].astype("int32"))
        test = (test[0].astype("float32") / 255.0, test[1].astype("int32"))
        task = ("classification", int(train[1].max()) + 1)
    if args.samples:
        train = tuple(array[: args.samples] for array in train)
    if args.test_samples:
        test = tuple(array[: args.test_samples] for array in test)
    return train, test, task


def build_plain_model(args, train, task):
    from keras_sngd.models import REFERENCE_MODELS

    kind, classes = task
    if kind == "language_model":
        model = REFERENCE_MODELS["lstm"](vocabulary_size=classes, num_layers=args.lstm_layers)
    else:
        model = REFERENCE_MODELS[args.model](input_shape=train[0].shape[1:], classes=classes)
    if args.l2:
        model = keras.models.clone_model(model, clone_function=_with_l2(args.l2))
    return model


def _with_l2(l2):
    def clone(layer):
        config = layer.get_config()
        if "kernel_regularizer" in config:
            config["kernel_regularizer"] = keras.regularizers.L2(l2)
        return layer.__class__.from_config(config)

    return clone


def build_training(name, learning_rate, plain, args):
    """The model to fit and its optimizer, for one optimizer name."""
    if name == "sngd":
        model = reconstruct(plain, local_fisher_arguments=args.local_fisher)
        return model, keras.optimizers.SGD(learning_rate)
    if name == "ngd":
        from keras_sngd.optimizers import NGD

        model = reconstruct(plain, local_fisher_arguments=args.local_fisher, layer_class=FisherStatistics)
        return model, NGD(learning_rate).attach(model)
    model = keras.models.clone_model(plain)
    model.set_weights(plain.get_weights())
    if name == "sgd":
        return model, keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adam":
        return model, keras.optimizers.Adam(learning_rate)
    from keras_sngd.optimizers import RAdam

    return model, RAdam(learning_rate)


class _EpochClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epoch_ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter() - self.start)


def run_one(name, learning_rate, seed, data, task, args):
    """Train one optimizer with one seed; returns the per-epoch losses, times and test metric."""
    (train, test) = data
    keras.utils.set_random_seed(seed)
    plain = build_plain_model(args, train, task)
    model, optimizer = build_training(name, learning_rate, plain, args)
    language_model = task[0] == "language_model"
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[] if language_model else ["accuracy"],
    )
    clock = _EpochClock()
    history = model.fit(
        *train, batch_size=args.batch_size, epochs=args.epochs, callbacks=[clock], verbose=args.verbose
    )
    test_metrics = model.evaluate(*test, batch_size=max(args.batch_size, 256), verbose=0, return_dict=True)
    result = {
        "optimizer": name,
        "learning_rate": learning_rate,
        "seed": seed,
        "losses": [float(loss) for loss in history.history["loss"]],
        "epoch_ends": clock.epoch_ends,
        "test_loss": float(test_metrics["loss"]),
    }
    if language_model:
        result["test_perplexity"] = float(math.exp(min(test_metrics["loss"], 50.0)))
    else:
        result["test_accuracy"] = float(test_metrics["accuracy"])
    return result


def choose_learning_rate(name, data, task, args):
    """The grid value with the lowest final training loss on the first seed (non-finite losses lose)."""
    best = None
    for learning_rate in args.lr_grid:
        result = run_one(name, learning_rate, args.seeds[0], data, task, args)
        loss = result["losses"][-1]
        print(f"  lr grid: {name} lr={learning_rate}: final training loss {loss:.4f}", flush=True)
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, learning_rate)
    return best[1] if best else args.learning_rates[name]


def summarize(results, optimizers):
    """Rows of the table: per optimizer, aggregates over seeds, and the time to the best baseline's loss."""
    by_name = {name: [r for r in results if r["optimizer"] == name] for name in optimizers}
    final = {name: [r["losses"][-1] for r in runs] for name, runs in by_name.items()}
    # The target is the best first-order baseline's loss; NGD (the same method as SNGD, at another
    # cost) is the baseline only when no first-order optimizer ran.
    first_order = [name for name in optimizers if name in ("sgd", "adam", "radam")]
    candidates = first_order or [name for name in optimizers if name != "sngd"]
    baselines = [name for name in candidates if all(math.isfinite(x) for x in final[name])]
    target = min((statistics.mean(final[name]) for name in baselines), default=None)
    rows = []
    for name, runs in by_name.items():
        per_epoch = [statistics.median(np.diff(r["epoch_ends"])) if len(r["epoch_ends"]) > 1 else r["epoch_ends"][0]
                     for r in runs]
        # On the seed-averaged curve: the first epoch end whose mean loss is at or below the target.
        mean_losses = np.mean([r["losses"] for r in runs], axis=0)
        mean_ends = np.mean([r["epoch_ends"] for r in runs], axis=0)
        reached = [float(t) for loss, t in zip(mean_losses, mean_ends) if target is not None and loss <= target * (1 + 1e-9)]
        metric_key = "test_perplexity" if "test_perplexity" in runs[0] else "test_accuracy"
        rows.append({
            "optimizer": name,
            "label": LABELS[name],
            "learning_rate": runs[0]["learning_rate"],
            "seeds": len(runs),
            "seconds_per_epoch": _mean_spread(per_epoch),
            "final_training_loss": _mean_spread(final[name]),
            metric_key: _mean_spread([r[metric_key] for r in runs]),
            "seconds_to_target": {"mean": reached[0], "std": 0.0} if reached else None,
            "target_loss": target,
        })
    return rows


def _mean_spread(values):
    values = [float(v) for v in values]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _format(cell, digits):
    if cell is None:
        return "not reached"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" ± {cell['std']:.{digits}f}" if cell["std"] else "")


def markdown_table(rows):
    metric_key = "test_perplexity" if "test_perplexity" in rows[0] else "test_accuracy"
    metric = "test perplexity" if metric_key == "test_perplexity" else "test accuracy"
    target = rows[0]["target_loss"]
    lines = [
        f"| optimizer | lr | s/epoch | final training loss | {metric} | s to loss {target:.4f} |" if target is not None
        else f"| optimizer | lr | s/epoch | final training loss | {metric} | s to target |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['learning_rate']:g} | {_format(row['seconds_per_epoch'], 2)} | "
            f"{_format(row['final_training_loss'], 4)} | {_format(row[metric_key], 4)} | "
            f"{_format(row['seconds_to_target'], 1)} |"
        )
    return "\n".join(lines)


def write_outputs(args, results, rows, machine):
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump({"command": " ".join(["python -m keras_sngd.bench"] + sys.argv[1:]) if machine else None,
                   "machine": machine, "settings": {k: v for k, v in vars(args).items()},
                   "summary": rows, "runs": results}, handle, indent=1, default=str)
    with open(os.path.join(args.output_dir, "results.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "learning_rate", "seed", "epoch", "training_loss", "seconds"])
        for r in results:
            for epoch, (loss, seconds) in enumerate(zip(r["losses"], r["epoch_ends"]), start=1):
                writer.writerow([r["optimizer"], r["learning_rate"], r["seed"], epoch, loss, seconds])
    if not args.no_plot:
        plot_curves(results, rows, os.path.join(args.output_dir, "curves.png"), title=f"{args.model} on {args.dataset}")


def plot_curves(results, rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        runs = [r for r in results if r["optimizer"] == row["optimizer"]]
        losses = np.mean([r["losses"] for r in runs], axis=0)
        times = np.mean([r["epoch_ends"] for r in runs], axis=0)
        epochs = np.arange(1, len(losses) + 1)
        by_epoch.plot(epochs, losses, marker="o", label=row["label"])
        by_time.plot(times, losses, marker="o", label=row["label"])
    if rows[0]["target_loss"] is not None:
        for axes in (by_epoch, by_time):
            axes.axhline(rows[0]["target_loss"], color="gray", linestyle=":", linewidth=1)
    for axes, xlabel in ((by_epoch, "epoch"), (by_time, "wall-clock seconds")):
        axes.set_xlabel(xlabel)
        axes.set_ylabel("training loss (epoch mean)")
        axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
    by_epoch.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def machine_description():
    import platform

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"Keras {keras.__version__} ({keras.backend.backend()} backend)")


def resummarize(directory, plot=True):
    """Recompute the summary, table and plot of an earlier run from `directory/results.json`."""
    path = os.path.join(directory, "results.json")
    with open(path) as handle:
        saved = json.load(handle)
    optimizers = list(dict.fromkeys(run["optimizer"] for run in saved["runs"]))
    rows = summarize(saved["runs"], optimizers)
    saved["summary"] = rows
    with open(path, "w") as handle:
        json.dump(saved, handle, indent=1, default=str)
    if plot:
        title = f"{saved['settings']['model']} on {saved['settings']['dataset']}"
        plot_curves(saved["runs"], rows, os.path.join(directory, "curves.png"), title)
    print(markdown_table(rows))
    return rows


def main(argv=None):
    args = parse_arguments(argv)
    if args.summarize:
        return resummarize(args.summarize)
    train, test, task = load_data(args)
    machine = machine_description()
    print(f"{args.model} on {args.dataset}: {len(train[0])} training and {len(test[0])} test examples, "
          f"batch {args.batch_size}, {args.epochs} epochs, seeds {args.seeds}; {machine}", flush=True)
    results = []
    for name in args.optimizers:
        learning_rate = choose_learning_rate(name, (train, test), task, args) if args.lr_grid else args.learning_rates[name]
        for seed in args.seeds:
            print(f"{LABELS[name]}, lr {learning_rate:g}, seed {seed}", flush=True)
            results.append(run_one(name, learning_rate, seed, (train, test), task, args))
    rows = summarize(results, args.optimizers)
    table = markdown_table(rows)
    print()
    print(table)
    write_outputs(args, results, rows, machine)
    print(f"\nwrote {args.output_dir}/results.json, results.csv" + ("" if args.no_plot else ", curves.png"))
    return rows


if __name__ == "__main__":
    main()
