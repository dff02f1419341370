"""K-FAC against SNGD and Adam on the paper's MLP (or the small CNN) with real Fashion-MNIST, in one process.

    python benchmarks/kfac_comparison.py                                   # MLP, 8192 images, 3 epochs
    python benchmarks/kfac_comparison.py --kfac-grid 0.01,0.03,0.1,0.3     # K-FAC learning-rate grid only
    python benchmarks/kfac_comparison.py --model small_cnn --samples 4096 --epochs 2

Every optimizer starts from the same initial weights (one seed) and sees the same batches in the same
order (`shuffle=False`); it prints the training loss after each epoch and the wall-clock and CPU (process)
seconds per epoch (medians of the epochs after the first, which also compiles; on a shared machine the CPU
seconds are the steadier of the two). Optimizers: K-FAC (`keras_sngd.optimizers.KFAC`, its
defaults, learning rate `--kfac-lr`), SNGD (`keras_sngd.reconstruct` with its default LocalFisher, plain
SGD at `--sngd-lr`), Adam (`--adam-lr`) and, with `--optimizers`, SGD with momentum 0.9 (`--sgd-lr`).
Use `nice` and small sizes on a shared machine.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sngd import reconstruct  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402
from keras_sngd.models import small_cnn  # noqa: E402
from keras_sngd.optimizers import build_kfac_training  # noqa: E402
from keras_sngd.optimizers import prepare_kfac  # noqa: E402

MODELS = {"mlp": paper_mlp, "small_cnn": small_cnn}


class _EpochClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.ends, self.cpu_ends = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter() - self.start)
        self.cpu_ends.append(time.process_time() - self.cpu_start)


def training(name, plain, learning_rate, args):
    if name == "kfac":
        model, optimizer = build_kfac_training(plain, learning_rate)
        if args.kfac_fisher == "true":
            model = prepare_kfac(plain, fisher="true", seed=args.seed)
        if args.kfac_options:
            options = {**optimizer.get_config(), **args.kfac_options}
            optimizer = type(optimizer).from_config(options)
        return model, optimizer
    if name == "sngd":
        return reconstruct(plain), keras.optimizers.SGD(learning_rate)
    model = keras.models.clone_model(plain)
    model.set_weights(plain.get_weights())
    if name == "sgd":
        return model, keras.optimizers.SGD(learning_rate, momentum=0.9)
    return model, keras.optimizers.Adam(learning_rate)


def run(name, learning_rate, data, args):
    keras.utils.set_random_seed(args.seed)
    plain = MODELS[args.model]()
    model, optimizer = training(name, plain, learning_rate, args)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clock = _EpochClock()
    history = model.fit(*data, batch_size=args.batch_size, epochs=args.epochs, shuffle=False, callbacks=[clock], verbose=0)
    durations = np.diff([0.0] + clock.ends)
    per_epoch = statistics.median(durations[1:]) if len(durations) > 1 else durations[0]
    cpu = np.diff([0.0] + clock.cpu_ends)
    cpu_per_epoch = statistics.median(cpu[1:]) if len(cpu) > 1 else cpu[0]
    losses = history.history["loss"]
    print(
        f"{name:5s} lr={learning_rate:<7g} loss per epoch: {' / '.join(f'{loss:.4f}' for loss in losses)}   "
        f"{per_epoch:.2f} s/epoch, {cpu_per_epoch:.2f} CPU s/epoch (first epoch with compilation {durations[0]:.2f} s)",
        flush=True,
    )
    return losses, per_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kfac-lr", type=float, default=0.1)
    parser.add_argument("--sngd-lr", type=float, default=0.1)
    parser.add_argument("--adam-lr", type=float, default=0.001)
    parser.add_argument("--sgd-lr", type=float, default=0.03)
    parser.add_argument("--optimizers", default="kfac,sngd,adam", help="from kfac, sngd, adam, sgd (momentum 0.9)")
    parser.add_argument("--kfac-grid", default="", help="comma-separated K-FAC learning rates; runs only K-FAC")
    parser.add_argument("--kfac", default="", help="other KFAC arguments, e.g. kl_clip=0.01,damping=0.001,momentum=0.9")
    parser.add_argument("--kfac-fisher", choices=["empirical", "true"], default="empirical",
                        help="K-FAC's S factor: empirical Fisher, or true Fisher from 8 sampled-label copies per batch")
    args = parser.parse_args()
    args.kfac_options = {}
    for item in filter(None, args.kfac.split(",")):
        key, value = item.split("=")
        args.kfac_options[key] = None if value == "None" else (int(value) if key == "update_every" else float(value))
    images, labels = load_dataset("fashion_mnist", "train")
    data = (images[: args.samples].astype("float32") / 255.0, labels[: args.samples].astype("int32"))
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, {args.model}, {args.samples} images, "
        f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}",
        flush=True,
    )
    if args.kfac_grid:
        for learning_rate in (float(value) for value in args.kfac_grid.split(",")):
            run("kfac", learning_rate, data, args)
        return
    rates = {"kfac": args.kfac_lr, "sngd": args.sngd_lr, "adam": args.adam_lr, "sgd": args.sgd_lr}
    for name in args.optimizers.split(","):
        run(name, rates[name], data, args)


if __name__ == "__main__":
    main()
