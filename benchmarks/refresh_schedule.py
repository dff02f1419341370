"""Refresh schedules for the paper MLP: loss per epoch, epoch time and refreshes per layer (issue #7).

Each configuration is `update_every:refresh_tolerance`, or `update_every` for the default tolerance (refresh when due and the whitening drift
`||U^T G_d U - I||_F / sqrt(d)` exceeds the tolerance; 0 refreshes whenever due). One process, same data,
same seed; SGD lr 0.1 on the reconstruction (LocalFisher defaults otherwise) and a plain-SGD epoch time
for the ratio.

    python benchmarks/refresh_schedule.py --configs 50:0,10:0.3,10:0.5 --images 20000 --epochs 3
"""

import argparse

import keras
import numpy as np

from keras_sngd import LocalFisher
from keras_sngd import reconstruct
from keras_sngd.bench.training import EpochClock
from keras_sngd.datasets import load_dataset
from keras_sngd.models import paper_mlp


def run(data, args, local_fisher_arguments=None):
    keras.utils.set_random_seed(0)
    model = paper_mlp()
    if local_fisher_arguments is not None:
        model = reconstruct(model, local_fisher_arguments=local_fisher_arguments)
    model.compile(keras.optimizers.SGD(args.learning_rate if local_fisher_arguments is not None else 0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    clock = EpochClock()
    losses = model.fit(*data, batch_size=args.batch_size, epochs=args.epochs, callbacks=[clock], verbose=0).history["loss"]
    durations = np.diff(np.r_[0.0, clock.epoch_ends])
    refreshes = [int(layer.refresh_count.numpy()) for layer in model.layers if isinstance(layer, LocalFisher)]
    return losses, durations, refreshes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="50:0,10:0.3")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    images, labels = load_dataset("fashion_mnist", "train")
    data = (images[: args.images].astype("float32") / 255.0, labels[: args.images])
    _, sgd_durations, _ = run(data, args)
    sgd = float(np.median(sgd_durations[1:]))
    print(f"paper MLP, {args.images} images, batch {args.batch_size}, SNGD lr {args.learning_rate}; SGD {sgd:.2f} s/epoch")
    print("| update_every:tolerance | loss per epoch | s/epoch (after the 1st) | ratio to SGD | refreshes per layer |")
    print("|---|---|---|---|---|")
    for config in args.configs.split(","):
        every, _, tolerance = config.partition(":")
        arguments = {"update_every": int(every)}
        if tolerance:  # without one, the layer's default (also for versions without the option)
            arguments["refresh_tolerance"] = float(tolerance)
        losses, durations, refreshes = run(data, args, arguments)
        steady = float(np.median(durations[1:]))
        print(f"| {config} | {' '.join(f'{x:.4f}' for x in losses)} | {steady:.2f} | {steady / sgd:.2f} | {refreshes} |",
              flush=True)


if __name__ == "__main__":
    main()
