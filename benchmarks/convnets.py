"""Issue 8's target table: SNGD with `reconstruct` defaults against Adam on CNNs, a ResNet, an LSTM and the MLP.

Training part (`--part training`): for each model, on the first `--samples` real Fashion-MNIST training
images (batch 64, `--epochs` epochs, seed 0, the same data order for every run), the final training loss of
Adam at lr 3e-3 and 1e-3, plain SGD at 0.1, and SNGD = `keras_sngd.reconstruct(model)` trained with
`keras.optimizers.SGD(lr)` at lr 0.3, 0.1, 0.03 and 0.01 (no clipping, no tuning: what a user writes).
Targets: SNGD finite and below chance loss (ln 10 = 2.303) at every lr, and its best loss < 0.9x Adam's best.

Generalization part (`--part generalization`): the whole training set, 5 epochs, test accuracy of Adam
(3e-3, 1e-3), Muon (3e-3, 1e-3; Keras's `keras.optimizers.Muon`, which uses Adam for non-matrix variables)
and SNGD (lr 0.1 and 0.03) with and without SGD's decoupled `weight_decay`. The decay acts on the
whitened kernel: `W' <- (1 - lr wd) W'` shrinks the effective `W = U W'` by the same factor between
refreshes, and as a penalty it is `wd/2 ||W'||^2 = wd/2 tr(W^T G W) = wd/2 E||x W||^2`: an L2 penalty in the
Fisher metric, on the size of the layer's output rather than of its weights.

    python benchmarks/convnets.py --part training                   # about 20 minutes on 2 CPU cores
    python benchmarks/convnets.py --part training --models cnn_bn --samples 4096 --epochs 1
    python benchmarks/convnets.py --part generalization --models mlp,cnn_bn
    python benchmarks/convnets.py --part generalization --models mlp --runs "SNGD 0.1,SNGD 0.1 wd 0.0001"
"""

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
from benchmarks.stability_common import load_subset  # noqa: E402
from benchmarks.stability_common import plain_model  # noqa: E402

CHANCE = math.log(10.0)
SNGD_RATES = (0.3, 0.1, 0.03, 0.01)
ADAM_RATES = (3e-3, 1e-3)


def _fit(name, optimizer, data, epochs, sngd, validation=None):
    keras.utils.set_random_seed(0)
    model = plain_model(name)
    if sngd:
        model = keras_sngd.reconstruct(model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(*data, batch_size=64, epochs=epochs, shuffle=False, verbose=0).history
    loss = history["loss"][-1]
    accuracy = None
    if validation is not None:
        accuracy = model.evaluate(*validation, batch_size=512, verbose=0)[1]
    return (loss if np.isfinite(loss) else float("nan")), accuracy


def training(models, samples, epochs):
    data = load_subset(samples)
    print(f"Final training loss, {samples} Fashion-MNIST images, batch 64, {epochs} epochs, seed 0.")
    header = ["model", "Adam 3e-3", "Adam 1e-3", "SGD 0.1"] + [f"SNGD {lr:g}" for lr in SNGD_RATES]
    print("| " + " | ".join(header + ["all finite, < chance", "best SNGD / best Adam", "target"]) + " |")
    print("|" + "---|" * (len(header) + 3))
    for name in models:
        start = time.perf_counter()
        adam = [_fit(name, keras.optimizers.Adam(lr), data, epochs, False)[0] for lr in ADAM_RATES]
        sgd = _fit(name, keras.optimizers.SGD(0.1), data, epochs, False)[0]
        sngd = [_fit(name, keras.optimizers.SGD(lr), data, epochs, True)[0] for lr in SNGD_RATES]
        stable = all(np.isfinite(loss) and loss < CHANCE for loss in sngd)
        ratio = np.nanmin(sngd) / np.nanmin(adam) if np.isfinite(sngd).any() else float("nan")
        verdict = "met" if stable and ratio < 0.9 else "missed"
        cells = [name] + [f"{loss:.3f}" for loss in adam + [sgd] + sngd]
        print("| " + " | ".join(cells + ["yes" if stable else "no", f"{ratio:.2f}", verdict]) + " |"
              + f"  <!-- {time.perf_counter() - start:.0f} s -->", flush=True)


def generalization(models, epochs, weight_decay, samples, only):
    train = load_subset(samples)
    test = load_subset(10000, "test")
    runs = [(f"Adam {lr:g}", lambda lr=lr: keras.optimizers.Adam(lr), False) for lr in ADAM_RATES]
    runs += [(f"Muon {lr:g}", lambda lr=lr: keras.optimizers.Muon(learning_rate=lr), False) for lr in ADAM_RATES]
    for lr in (0.1, 0.03):
        runs.append((f"SNGD {lr:g}", lambda lr=lr: keras.optimizers.SGD(lr), True))
        runs.append((f"SNGD {lr:g} wd {weight_decay:g}",
                     lambda lr=lr: keras.optimizers.SGD(lr, weight_decay=weight_decay), True))
    if only:
        runs = [run for run in runs if run[0] in only]
    print(f"Test accuracy on the 10,000 test images (final training loss), {len(train[0])} training images, "
          f"batch 64, {epochs} epochs, seed 0.")
    print("| model | " + " | ".join(label for label, _, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in models:
        cells = []
        for _, optimizer, sngd in runs:
            loss, accuracy = _fit(name, optimizer(), train, epochs, sngd, validation=test)
            cells.append(f"{accuracy:.4f} ({loss:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("training", "generalization"), default="training")
    parser.add_argument("--models", default="mlp,plain_cnn,cnn_bn,resnet_small,lstm_rows")
    parser.add_argument("--samples", type=int, default=None, help="8192 for training, 60000 for generalization")
    parser.add_argument("--runs", default="", help="generalization: only these columns, comma-separated")
    parser.add_argument("--epochs", type=int, default=None, help="3 for training, 5 for generalization")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.part == "training":
        training(models, args.samples or 8192, args.epochs or 3)
    else:
        only = [run for run in args.runs.split(",") if run]
        generalization(models, args.epochs or 5, args.weight_decay, args.samples or 60000, only)


if __name__ == "__main__":
    main()
