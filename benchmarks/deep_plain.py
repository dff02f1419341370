"""Deep networks without normalization: SNGD's trust radius against depth (issue 8, docs/stability.md).

Trains plain SGD and SNGD (`keras_sngd.reconstruct` with its defaults, or with `--max-step` values) on the
first real Fashion-MNIST training images and prints each run's epoch losses. Models: `vgg16`
(`keras.applications.VGG16(weights=None)`, 32x32x3 inputs: the images padded and repeated over 3
channels, 16 parameterized layers, no normalization) and `deep_plain` (14 3x3 convolutions of 16
channels and two Dense layers, no normalization: `keras_sngd.models.deep_plain_cnn`).

    python benchmarks/deep_plain.py --model deep_plain --lr 0.3 --max-step default,0.05,0.0156,0.005
    python benchmarks/deep_plain.py --model vgg16 --lr 0.3 --max-step 0.0156,0.01,0.005 --epochs 3
    python benchmarks/deep_plain.py --model vgg16 --lr 0.3 --max-step 0.05 --global-clipnorm 0.1 --epochs 3
    python benchmarks/deep_plain.py --model vgg16 --lr 0.3 --max-step 0.0156 --local-fisher '{"damping": 1.0}' --epochs 3

VGG16 is slow on 2 CPU cores (4 to 8 minutes per run of 24 steps): most of it is the refresh of the
LocalFisher before `fc2`, whose input has 4,096 features.
"""

import argparse
import json

import keras
import numpy as np

from keras_sngd import reconstruct
from keras_sngd.datasets import load_dataset
from keras_sngd.models import deep_plain_cnn


def vgg16():
    return keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)


def data(model_name, samples):
    images, labels = load_dataset("fashion_mnist", "train")
    images = images[:samples].astype("float32").reshape(-1, 28, 28, 1) / 255.0
    if model_name == "vgg16":
        images = np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    return images, labels[:samples]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["deep_plain", "vgg16"], default="deep_plain")
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--max-step", default="default", help="comma-separated: 'default' (reconstruct's) or floats")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--local-fisher", default="{}", help='more LocalFisher arguments, JSON: \'{"damping": 1.0}\'')
    parser.add_argument("--global-clipnorm", type=float, default=None, help="SGD's global_clipnorm")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the batches (default: a fixed order)")
    args = parser.parse_args(argv)
    extra = json.loads(args.local_fisher)
    builder = {"deep_plain": deep_plain_cnn, "vgg16": vgg16}[args.model]
    x, y = data(args.model, args.samples)
    runs = [("SGD", None)] + [(f"SNGD max_step={value}", value) for value in args.max_step.split(",")]
    for label, max_step in runs:
        keras.utils.set_random_seed(0)
        model = builder()
        if max_step is not None:
            arguments = dict(extra) if max_step == "default" else dict(extra, max_step=float(max_step))
            model = reconstruct(model, local_fisher_arguments=arguments or None)
        optimizer = keras.optimizers.SGD(args.lr, global_clipnorm=args.global_clipnorm)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                           shuffle=args.shuffle).history["loss"]
        print(f"{args.model} lr {args.lr} {label}: " + " ".join(f"{loss:.4g}" for loss in losses), flush=True)


if __name__ == "__main__":
    main()
