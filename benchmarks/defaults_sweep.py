"""How LocalFisher's defaults were chosen: a one-factor-at-a-time sweep around them.

The paper's MLP (784-80-80-10, ReLU) on the first `--samples` real Fashion-MNIST training images, plain
SGD (no momentum), batch 64, fixed seed and data order. Each SNGD row changes one LocalFisher argument
(or the learning rate) from the defaults; SGD rows give the baseline at several learning rates. Prints a
Markdown table of the training loss after each epoch and the wall time of `fit`.

    python benchmarks/defaults_sweep.py                 # about 4 minutes on 2 CPU cores
    python benchmarks/defaults_sweep.py --epochs 2      # quicker look
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sngd import LocalFisher  # noqa: E402
from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY  # noqa: E402
from keras_sngd.datasets.idx import load_idx_directory  # noqa: E402

DEFAULT_LEARNING_RATE = 0.1
SWEEP = {
    "learning_rate": [0.05, 0.2, 0.4],
    "damping": [0.001, 0.003, 0.03, 0.1],
    "update_every": [20, 100],
    "momentum": [0.9],
    "activation_factor": [0.5],
    "center": [True],
    "preserve_function": [False],
}


def mlp(local_fisher_arguments):
    layers = [keras.Input((784,))]
    for units, activation in [(80, "relu"), (80, "relu"), (10, None)]:
        if local_fisher_arguments is not None:
            layers.append(LocalFisher(**local_fisher_arguments))
        layers.append(keras.layers.Dense(units, activation=activation))
    return keras.Sequential(layers)


def train(images, labels, epochs, learning_rate, local_fisher_arguments):
    keras.utils.set_random_seed(0)
    model = mlp(local_fisher_arguments)
    model.compile(
        keras.optimizers.SGD(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    start = time.perf_counter()
    history = model.fit(images, labels, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    return history.history["loss"], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIRECTORY)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    images, labels = load_idx_directory(args.data_dir, "train")
    images = images[: args.samples].reshape(-1, 784).astype("float32") / 255.0
    labels = labels[: args.samples].astype("int32")

    runs = [("SGD", f"lr={lr}", lr, None) for lr in (0.05, 0.1, 0.2, 0.4)]
    runs.append(("SNGD", "defaults", DEFAULT_LEARNING_RATE, {}))
    for argument, values in SWEEP.items():
        for value in values:
            if argument == "learning_rate":
                runs.append(("SNGD", f"lr={value}", value, {}))
            else:
                runs.append(("SNGD", f"{argument}={value}", DEFAULT_LEARNING_RATE, {argument: value}))

    defaults = LocalFisher().get_config()
    print(
        f"Fashion-MNIST, first {len(images)} images, MLP 784-80-80-10, batch 64, SGD lr "
        f"{DEFAULT_LEARNING_RATE} unless said; LocalFisher defaults: "
        + ", ".join(f"{k}={defaults[k]}" for k in ("momentum", "update_every", "damping", "activation_factor"))
    )
    print()
    print("| method | change | " + " | ".join(f"loss ep {e + 1}" for e in range(args.epochs)) + " | fit s |")
    print("|---|---|" + "---|" * (args.epochs + 1))
    rows = []
    for method, change, learning_rate, arguments in runs:
        losses, seconds = train(images, labels, args.epochs, learning_rate, arguments)
        rows.append({"method": method, "change": change, "losses": losses, "seconds": seconds})
        cells = " | ".join("nan" if not np.isfinite(loss) else f"{loss:.3f}" for loss in losses)
        print(f"| {method} | {change} | {cells} | {seconds:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
