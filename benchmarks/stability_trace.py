"""Where and when SNGD blows up: a per-step trace of one reconstructed model on real Fashion-MNIST.

Trains `keras_sngd.reconstruct(model)` with plain `SGD(lr)` and, after every batch, records the loss and,
for every LocalFisher: its consumer's whitened kernel `W'` (norm, and the step `||dW'|| / lr`, which is
the gradient norm `||g'||` on steps without a refresh), `||U||_2` (largest singular value), the input's
RMS and the refresh count. Prints the trace around the first step whose loss is non-finite or above
`--blowup` (or the last steps if none), one row per step and layer.

    python benchmarks/stability_trace.py --model cnn_bn --lr 0.03          # about a minute on 2 CPU cores
    python benchmarks/stability_trace.py --model plain_cnn --lr 0.1 --fix none
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.stability_common import load_subset  # noqa: E402
from benchmarks.stability_common import sgd  # noqa: E402
from benchmarks.stability_common import sngd_model  # noqa: E402
from keras_sngd import LocalFisher  # noqa: E402


class Trace(keras.callbacks.Callback):
    def __init__(self, fishers, learning_rate, probe):
        super().__init__()
        self.fishers = fishers
        self.learning_rate = learning_rate
        self.probe = probe
        self.rows = []
        self.previous = [self._kernel(fisher) for fisher in fishers]

    @staticmethod
    def _kernel(fisher):
        consumer = fisher._outbound_nodes[0].operation
        weight = getattr(consumer, "kernel", None)
        if weight is None:
            weight = consumer.cell.kernel
        return np.array(weight.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = []
        for index, fisher in enumerate(self.fishers):
            kernel = self._kernel(fisher)
            delta = np.linalg.norm(kernel - self.previous[index]) / self.learning_rate
            self.previous[index] = kernel
            inverse_root = fisher.inverse_root.numpy()
            step.append({
                "layer": fisher.name.replace("_local_fisher", ""),
                "kernel": float(np.linalg.norm(kernel)),
                "step": float(delta),
                "u_norm": float(np.linalg.norm(inverse_root, 2)) if np.all(np.isfinite(inverse_root)) else float("nan"),
                "refreshes": int(fisher.refresh_count.numpy()),
                "failed": int(fisher.failed_refresh_count.numpy()),
                "input_rms": float(np.sqrt(max(np.trace(fisher.second_moment.numpy())
                                               / max(float(fisher.statistics_weight.numpy()), 1e-30), 0.0))),
            })
        self.rows.append((float(logs["loss"]), step))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn_bn")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--fix", default="none", help="variant, see stability_common.parse_variant")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--blowup", type=float, default=3.0, help="loss above this counts as a blow-up")
    parser.add_argument("--window", type=int, default=6, help="steps shown before the blow-up")
    args = parser.parse_args()
    images, labels = load_subset(args.samples)
    keras.utils.set_random_seed(0)
    model = sngd_model(args.model, args.fix)
    model.compile(sgd(args.lr, args.fix), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fishers = [layer for layer in model.layers if isinstance(layer, LocalFisher)]
    trace = Trace(fishers, args.lr, images[:256])
    model.fit(images, labels, batch_size=64, epochs=args.epochs, shuffle=False, verbose=0, callbacks=[trace])
    losses = np.array([loss for loss, _ in trace.rows])
    bad = np.flatnonzero(~np.isfinite(losses) | (losses > args.blowup))
    end = int(bad[0]) + 1 if bad.size else len(losses)
    print(f"model {args.model}, fix {args.fix}, SGD({args.lr:g}), {len(losses)} steps; "
          + (f"first blow-up at step {end}" if bad.size else "no blow-up")
          + "; loss every 20 steps: " + " ".join(f"{value:.2f}" for value in losses[::20]))
    print("| step | loss | layer | ||W'|| | ||g'|| = ||dW'||/lr | ||U||_2 | input RMS | refreshes (failed) |")
    print("|---|---|---|---|---|---|---|---|")
    for index in range(max(0, end - args.window), end):
        loss, step = trace.rows[index]
        for entry in step:
            print(f"| {index + 1} | {loss:.3f} | {entry['layer']} | {entry['kernel']:.3g} | {entry['step']:.3g} | "
                  f"{entry['u_norm']:.3g} | {entry['input_rms']:.3g} | {entry['refreshes']} ({entry['failed']}) |")


if __name__ == "__main__":
    main()
