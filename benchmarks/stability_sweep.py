"""Final training loss of SNGD variants on the small reference networks, for a grid of learning rates.

Each run: `benchmarks.stability_common.sngd_model(model, variant)` trained with `SGD(lr)` (plus
`global_clipnorm=1` for variants with `clip`) on the first `--samples` Fashion-MNIST training images,
batch 64, seed 0, no shuffling; prints the training loss after each epoch (`nan` once non-finite).

    python benchmarks/stability_sweep.py --models cnn_bn --variants none,damping=0.1 --lrs 0.3,0.1,0.03,0.01
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from benchmarks.stability_common import load_subset  # noqa: E402
from benchmarks.stability_common import sgd  # noqa: E402
from benchmarks.stability_common import sngd_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn_bn")
    parser.add_argument("--variants", default="none", help="comma-separated; see stability_common.parse_variant")
    parser.add_argument("--lrs", default="0.3,0.1,0.03,0.01")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    images, labels = load_subset(args.samples)
    print("| model | variant | lr | " + " | ".join(f"loss ep {e + 1}" for e in range(args.epochs)) + " | s |")
    print("|---|---|---|" + "---|" * (args.epochs + 1))
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            for learning_rate in [float(value) for value in args.lrs.split(",")]:
                keras.utils.set_random_seed(0)
                model = sngd_model(name, variant)
                model.compile(sgd(learning_rate, variant), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                start = time.perf_counter()
                losses = model.fit(images, labels, batch_size=64, epochs=args.epochs, shuffle=False,
                                   verbose=0).history["loss"]
                print(f"| {name} | {variant} | {learning_rate:g} | " + " | ".join(f"{loss:.3f}" for loss in losses)
                      + f" | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
