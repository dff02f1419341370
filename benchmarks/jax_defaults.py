"""SNGD with its defaults on the JAX backend, no callback: `reconstruct(model)` and plain `SGD`.

    KERAS_BACKEND=jax python benchmarks/jax_defaults.py [--models mlp,plain_cnn] [--samples 4096]

For each model (from `keras_sngd.models.REFERENCE_MODELS`), on the first `--samples` real Fashion-MNIST
training images, batch 64, `--epochs` epochs, same seed and data order: plain SGD and SNGD at each
learning rate of `--lrs`, and Adam at 1e-3. Prints one line per run (final training loss per epoch and
fit seconds) and each SNGD layer's refresh mode. Before the optimizer handoff (`keras_sngd.handoff`) the
MLP gave NaN here with the LocalFisher defaults, and the trust region of convolutional networks had no
effect on JAX.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import REFERENCE_MODELS  # noqa: E402


def run(model_name, optimizer_name, lr, images, labels, epochs):
    keras.utils.set_random_seed(0)
    model = REFERENCE_MODELS[model_name]()
    if optimizer_name == "sngd":
        model = keras_sngd.reconstruct(model)
    optimizer = keras.optimizers.Adam(lr) if optimizer_name == "adam" else keras.optimizers.SGD(lr)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    history = model.fit(images, labels, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    losses = " ".join(f"{loss:.4f}" for loss in history.history["loss"])
    print(f"{keras.backend.backend()} {model_name:10s} {optimizer_name:5s} lr {lr:<6g} loss/epoch {losses}  "
          f"{seconds:.1f} s", flush=True)
    if optimizer_name == "sngd":
        modes = {str(layer.refresh_mode) for layer in keras_sngd.callbacks.local_fishers(model)}
        print("    refresh modes:", "; ".join(sorted(modes)), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,plain_cnn")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", default="0.1,0.03")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    images, labels = load_dataset("fashion_mnist", "train", data_dir=args.data_dir)
    images = images[: args.samples].astype("float32") / 255.0
    labels = labels[: args.samples].astype("int32")
    for name in args.models.split(","):
        shaped = images.reshape(len(images), 28, 28, 1)
        for lr in [float(rate) for rate in args.lrs.split(",")]:
            for optimizer_name in ("sgd", "sngd"):
                run(name, optimizer_name, lr, shaped, labels, args.epochs)
        run(name, "adam", 1e-3, shaped, labels, args.epochs)


if __name__ == "__main__":
    main()
