"""The main command's flags (argparse does the parsing and the checks) and its `main`."""

import argparse
import os
import sys

from keras_sngd.bench import data as data_module
from keras_sngd.bench import report
from keras_sngd.bench.optimizers import OPTIMIZERS
from keras_sngd.bench.training import Settings
from keras_sngd.bench.training import run_one
from keras_sngd.bench.training import search_learning_rate

DEFAULT_OPTIMIZERS = "sgd,adam,muon,sngd"
# `--lr-grid default`: every optimizer tries its own table grid.
DEFAULT_GRID = "default"


def _items(text):
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def optimizer_list(text):
    """`sgd,adam,sngd` -> ["sgd", "adam", "sngd"], each a row of the optimizer table."""
    names = _items(text)
    unknown = [name for name in names if name not in OPTIMIZERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown optimizer {unknown[0]!r}; choose from {','.join(OPTIMIZERS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an optimizer is listed twice: {text!r}")
    return names


def int_list(text):
    try:
        return [int(item) for item in _items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated ints; got {text!r}") from None


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number; got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"want a finite number > 0; got {text!r}")
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an int; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want an int >= 1; got {text!r}")
    return value


def learning_rates(text):
    """`sgd=0.05,sngd=0.2` -> {"sgd": 0.05, "sngd": 0.2}."""
    rates = {}
    for item in _items(text):
        name, equals, value = item.partition("=")
        if not equals or name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(f"want NAME=RATE with NAME in {','.join(OPTIMIZERS)}; got {item!r}")
        rates[name] = positive_float(value)
    return rates


def learning_rate_grid(text):
    """`default` (each optimizer's own grid from the table) or rates every optimizer tries, e.g. `0.1,0.01`."""
    if text.strip() == DEFAULT_GRID:
        return DEFAULT_GRID
    return [positive_float(item) for item in _items(text)]


def keyword_arguments(text):
    """`update_every=20,damping=0.03,center=true` -> {"update_every": 20, "damping": 0.03, "center": True}."""
    arguments = {}
    for item in _items(text):
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise argparse.ArgumentTypeError(f"want KEY=VALUE; got {item!r}")
        arguments[key] = _literal(value)
    return arguments


def _literal(value):
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def build_parser():
    from keras_sngd import bench

    parser = argparse.ArgumentParser(prog="python -m keras_sngd.bench", description=bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=data_module.model_names())
    parser.add_argument("--dataset", default=None, choices=data_module.KNOWN_DATASETS,
                        help="default: the model's (Fashion-MNIST for the 28x28 image models)")
    parser.add_argument("--optimizers", type=optimizer_list, default=optimizer_list(DEFAULT_OPTIMIZERS),
                        help=f"comma-separated, from {','.join(OPTIMIZERS)} (default: {DEFAULT_OPTIMIZERS})")
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=learning_rates, default={}, metavar="NAME=RATE,...",
                        help="per-optimizer learning rates, e.g. sgd=0.05,sngd=0.2 (defaults: "
                        + ", ".join(f"{name}={spec.learning_rate:g}" for name, spec in OPTIMIZERS.items()) + ")")
    parser.add_argument("--lr-grid", type=learning_rate_grid, default=None, metavar="default|RATE,...",
                        help="tune the learning rate on the first seed, keeping the lowest final training loss: "
                        "'default' gives every optimizer its own grid of the same size ("
                        + "; ".join(f"{name} " + ",".join(f"{x:g}" for x in spec.grid) for name, spec in OPTIMIZERS.items())
                        + "), or give rates every optimizer tries, e.g. 0.3,0.1,0.03,0.01")
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds; several give mean ± std")
    parser.add_argument("--l2", type=float, default=0.0, help="L2 penalty on every kernel of the plain model (the paper: 1e-3); "
                        "after reconstruct it acts on the effective kernels W = U W' (keras_sngd.regularization)")
    parser.add_argument("--samples", type=positive_int, default=None, help="use only the first N training examples")
    parser.add_argument("--test-samples", type=positive_int, default=None, help="use only the first N test examples")
    parser.add_argument("--sequence-length", type=positive_int, default=35, help="language model window length")
    parser.add_argument("--lstm-layers", type=positive_int, default=2, help="language model depth")
    parser.add_argument("--local-fisher", type=keyword_arguments, default={}, metavar="KEY=VALUE,...",
                        help="LocalFisher arguments for SNGD and NGD, e.g. update_every=20,damping=0.03")
    parser.add_argument("--data-dir", default=None, help="local dataset files (see keras_sngd.datasets.load_dataset)")
    parser.add_argument("--no-download", action="store_true",
                        help="never download: fail with instructions when the dataset is not on this machine")
    parser.add_argument("--output-dir", default=None, help="default: results/MODEL_DATASET")
    parser.add_argument("--no-plot", action="store_true", help="write no curves.png (also with --summarize)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras progress bars")
    parser.add_argument("--summarize", metavar="DIR", default=None,
                        help="recompute the table (and, unless --no-plot, the curves) from DIR/results.json; no training")
    return parser


def parse_arguments(argv=None):
    """The parsed flags, with the model's default dataset and output directory filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.summarize:
        return args
    args.dataset = args.dataset or data_module.default_dataset(args.model)
    problem = data_module.check_model_and_dataset(args.model, args.dataset)
    if problem:
        parser.error(problem)
    args.learning_rates = {name: spec.learning_rate for name, spec in OPTIMIZERS.items()} | args.lr
    args.output_dir = args.output_dir or os.path.join("results", f"{args.model}_{args.dataset}")
    return args


def grid_for(name, args):
    return OPTIMIZERS[name].grid if args.lr_grid == DEFAULT_GRID else tuple(args.lr_grid)


def machine_description():
    import platform

    import keras

    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"Keras {keras.__version__} ({keras.backend.backend()} backend)")


def main(argv=None):
    """Run the command: train every optimizer (after its grid search, if asked), print the table, write files.

    Returns the summary rows. When the dataset cannot be found or downloaded it exits (`SystemExit`, status
    1) with the message that says how to get it.
    """
    args = parse_arguments(argv)
    if args.summarize:
        return report.resummarize(args.summarize, plot=not args.no_plot)
    try:
        data = data_module.load_data(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                                     samples=args.samples, test_samples=args.test_samples,
                                     sequence_length=args.sequence_length)
    except FileNotFoundError as error:
        # The message says how to get the data; a traceback would only bury it.
        raise SystemExit(f"error: {error}") from None
    settings = Settings(model=args.model, epochs=args.epochs, batch_size=args.batch_size, l2=args.l2,
                        lstm_layers=args.lstm_layers, local_fisher=args.local_fisher, verbose=args.verbose)
    machine = machine_description()
    print(f"{args.model} on {args.dataset}: {len(data.train[0])} training and {len(data.test[0])} test examples, "
          f"batch {args.batch_size}, {args.epochs} epochs, seeds {args.seeds}; {machine}", flush=True)
    results, grids, grid_runs = [], {}, []
    settings_record = {key: value for key, value in vars(args).items()}
    command = " ".join(["python -m keras_sngd.bench"] + (sys.argv[1:] if argv is None else list(argv)))

    def record(rows):
        return {"command": command, "machine": machine, "settings": settings_record, "optimizers": args.optimizers,
                "grids": grids, "summary": rows, "runs": results, "grid_runs": grid_runs, "complete": rows is not None}

    for name in args.optimizers:
        learning_rate = args.learning_rates[name]
        if args.lr_grid:
            search = search_learning_rate(name, grid_for(name, args), args.seeds[0], data, settings)
            grids[name] = search.as_dict()
            grid_runs += search.runs
            report.write_checkpoint(args.output_dir, record(None))
            if search.all_diverged:
                print(f"  lr grid: {OPTIMIZERS[name].label} diverged at every learning rate of its grid "
                      f"({', '.join(f'{x:g}' for x in search.learning_rates)}): no runs, no learning rate chosen",
                      flush=True)
                continue
            learning_rate = search.best
        for seed in args.seeds:
            print(f"{OPTIMIZERS[name].label}, lr {learning_rate:g}, seed {seed}", flush=True)
            results.append(run_one(name, learning_rate, seed, data, settings))
            # Every finished run is on disk: an interrupted or failing command loses nothing.
            report.write_checkpoint(args.output_dir, record(None))
    rows = report.summarize(results, args.optimizers, grids)
    print()
    print(report.markdown_table(rows))
    race = report.race_table(results, args.optimizers)
    if race:
        print(f"\n{report.RACE_CAPTION}\n{race}")
    report.write_outputs(args.output_dir, record(rows), plot=not args.no_plot)
    print(f"\nwrote {args.output_dir}/results.json, results.csv" + ("" if args.no_plot else ", curves.png"))
    return rows
