"""Unnormalized inputs: the paper MLP on raw 0-255 pixels, SNGD against Adam, Muon and SGD.

SNGD's steps do not depend on the scale of the inputs: `G`, `U`, the damping (relative to the mean
eigenvalue), the batch-leverage scale and the trust region (relative to the weights) all scale with
them, so that the function moves by the same amount per step. The function it starts from does: a
Glorot-initialized ReLU network on pixels 255 times larger computes logits about 255 times larger
(with zero biases it is positively homogeneous). The function-preserving refresh keeps that function,
and SGD on the whitened kernels then moves the pre-activations by about the learning rate per step, so
the network needs thousands of steps to shrink its logits. Adam's and Muon's steps have a size of their
own, independent of the gradient's, and shrink them faster; plain SGD diverges. Normalizing the inputs
(`keras.layers.Rescaling(1 / 255)` in the model, or dividing the data) removes the difference.

For each scale in `--scales` (1: pixels / 255; 255: raw pixels) and each optimizer, the paper MLP
(784-80-80-10) on all 60,000 real Fashion-MNIST training images, batch 64, `--epochs` epochs, seed 0:
the training loss after each epoch and the test accuracy on the 10,000 test images.

    python benchmarks/input_scale.py            # about 3 minutes on 2 CPU cores
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402

OPTIMIZERS = {
    "SNGD SGD 0.1": lambda: keras.optimizers.SGD(0.1),
    "Adam 1e-3": lambda: keras.optimizers.Adam(1e-3),
    "Muon 1e-3": lambda: keras.optimizers.Muon(1e-3),
    "SGD 0.01 momentum 0.9": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
}


def run(label, scale, data, epochs, samples):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    model = paper_mlp(input_shape=(784,))
    if label.startswith("SNGD"):
        model = keras_sngd.reconstruct(model)
    model.compile(OPTIMIZERS[label](), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x[:samples] * scale, y[:samples], batch_size=64, epochs=epochs, verbose=0)
    accuracy = model.evaluate(x_test * scale, y_test, verbose=0)[1]
    return history.history["loss"], accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1,255", help="comma-separated input scales (1: pixels / 255)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60000, help="training images (the first N)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated, from: " + ", ".join(OPTIMIZERS))
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.optimizers.split(",") if label.strip()]
    unknown = [label for label in labels if label not in OPTIMIZERS]
    if unknown:
        parser.error(f"unknown --optimizers {unknown}; known: {list(OPTIMIZERS)}")
    scales = [float(scale) for scale in args.scales.split(",")]
    if any(not scale > 0 for scale in scales):
        parser.error(f"--scales must be positive numbers. Received: {args.scales!r}")
    train = load_dataset("fashion_mnist", "train", data_dir=args.data_dir)
    test = load_dataset("fashion_mnist", "test", data_dir=args.data_dir)
    data = tuple((images.reshape(len(images), 784).astype("float32") / 255.0, labels_) for images, labels_ in (train, test))
    print(f"paper MLP, {args.samples} Fashion-MNIST images, batch 64, {args.epochs} epochs, seed 0; keras "
          f"{keras.__version__}, backend {keras.backend.backend()}")
    print("| inputs | optimizer | training loss per epoch | test accuracy |")
    print("|---|---|---|---|")
    for scale in scales:
        name = {1.0: "pixels / 255", 255.0: "raw pixels (0 to 255)"}.get(scale, f"pixels / 255 x {scale:g}")
        for label in labels:
            losses, accuracy = run(label, scale, data, args.epochs, args.samples)
            print(f"| {name} | {label} | {' '.join(f'{loss:.4f}' for loss in losses)} | {accuracy:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
