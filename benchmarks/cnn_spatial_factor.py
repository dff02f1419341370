"""SNGD on the small CNN with the local Fisher of each convolution scaled by its number of output positions.

`LocalFisher` estimates `G = E[x x^T]` per position (the mean over batch and pixels). A convolution's
kernel gradient sums over its output positions, so (as in K-FAC for convolutions, Grosse & Martens 2016)
its Fisher carries that count `P` as a factor; the paper's scalar `E(v_f)` (`activation_factor`) is where
such a scalar goes. This script sets `activation_factor = P` for every Conv2D (1 for Dense) and trains
the small CNN on the first `--samples` Fashion-MNIST images with plain SGD at each `--lr`.

    python benchmarks/cnn_spatial_factor.py            # about 1 minute on 2 CPU cores
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import small_cnn  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", default="0.1,0.03")
    args = parser.parse_args()
    images, labels = load_dataset("fashion_mnist", "train")
    images = images[: args.samples].astype("float32") / 255.0
    labels = labels[: args.samples].astype("int32")
    print("| lr | activation_factor per conv | " + " | ".join(f"loss ep {e + 1}" for e in range(args.epochs)) + " | fit s |")
    print("|---|---|" + "---|" * (args.epochs + 1))
    for learning_rate in [float(value) for value in args.lr.split(",")]:
        keras.utils.set_random_seed(0)
        plain = small_cnn()
        factors = {
            layer.name: {"activation_factor": float(layer.output.shape[1] * layer.output.shape[2])}
            for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)
        }
        model = keras_sngd.reconstruct(plain, per_layer_arguments=factors)
        model.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.perf_counter()
        losses = model.fit(images, labels, batch_size=64, epochs=args.epochs, verbose=0).history["loss"]
        shown = ", ".join(f"{name}: {value['activation_factor']:g}" for name, value in factors.items())
        print(f"| {learning_rate:g} | {shown} | " + " | ".join(f"{loss:.4f}" for loss in losses)
              + f" | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
