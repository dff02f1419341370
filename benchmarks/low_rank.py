"""The experiments behind `rank="auto"` (`keras_sngd.low_rank`): training loss with a dense and a low-rank `U`.

For each network, SNGD (`keras_sngd.reconstruct` defaults, `keras.optimizers.SGD(0.1)`, batch 64) on the
first `--samples` real Fashion-MNIST training images, the final training loss (mean over seeds) with the
LocalFishers of the wide rank-2 inputs at a dense `U` (`rank=None`), at `rank="auto"`, and at fixed ranks:

- `mlp`: the paper's MLP; its 784 pixels are fixed features (damping 1, `auto`: rank 64), 5 epochs;
- `small_cnn`: its 800-wide Dense head reads the convolutions (damping 0.1 in a convolutional network,
  `auto`: rank 128), 3 epochs;
- `wide_mlp`: 784-512-512-10, whose 512-wide hidden inputs keep damping 0.01 (`auto`: dense), here with
  ranks forced on them, and with damping 0.1, 3 epochs.

Also, for each run, the whitening drift `||U^T G_d U - I||_F / sqrt(d)` of every low-rank layer right
after training (computed from its statistics in float64), and its refresh count.

    python benchmarks/low_rank.py                         # about 10 minutes on 2 CPU cores
    python benchmarks/low_rank.py --models small_cnn --seeds 0
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402
from keras_sngd.models import small_cnn  # noqa: E402
from keras_sngd.statistics import local_fisher_matrix  # noqa: E402


def wide_mlp(input_shape=(28, 28, 1)):
    return keras.Sequential([
        keras.Input(input_shape), keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu", name="hidden_1"),
        keras.layers.Dense(512, activation="relu", name="hidden_2"),
        keras.layers.Dense(10, name="logits"),
    ])


# model -> (builder, epochs, wide consumers, {run label: per-layer arguments for each wide consumer})
RUNS = {
    "mlp": (paper_mlp, 5, ["dense_1"], {"dense U": {"rank": None}, "auto": {}, "rank 32": {"rank": 32}}),
    "small_cnn": (small_cnn, 3, ["dense"], {"dense U": {"rank": None}, "auto": {}, "rank 64": {"rank": 64},
                                            "rank 100": {"rank": 100}, "rank 200": {"rank": 200}}),
    "wide_mlp": (wide_mlp, 3, ["hidden_2", "logits"], {
        "dense U (damping 0.01)": {"rank": None}, "rank 64, damping 0.01": {"rank": 64},
        "dense U, damping 0.1": {"rank": None, "damping": 0.1}, "auto, damping 0.1": {"damping": 0.1},
    }),
}


def drift(layer):
    """`||U^T G_d U - I||_F / sqrt(d)` of a LocalFisher's current `U` and statistics, in float64."""
    fisher = np.asarray(local_fisher_matrix(layer.second_moment.value, layer.mean.value,
                                            layer.statistics_weight.value, layer.center, layer.activation_factor),
                        "float64")
    dim = fisher.shape[0]
    damped = fisher + layer.damping * np.trace(fisher) / dim * np.eye(dim)
    inverse_root = np.asarray(layer.inverse_root.value, "float64")
    whitened = inverse_root.T @ damped @ inverse_root
    return float(np.linalg.norm(whitened - np.eye(dim)) / np.sqrt(dim))


def run(model, label, seeds, samples):
    builder, epochs, consumers, variants = RUNS[model]
    images, labels = load_dataset("fashion_mnist", "train")
    data = (images[:samples].astype("float32") / 255.0, labels[:samples])
    losses, details = [], []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        per_layer = {name: dict(variants[label]) for name in consumers}
        sngd = keras_sngd.reconstruct(builder(input_shape=data[0].shape[1:]), per_layer_arguments=per_layer)
        sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = sngd.fit(*data, batch_size=64, epochs=epochs, shuffle=False, verbose=0).history["loss"]
        losses.append(history[-1])
        fishers = [layer for layer in sngd.layers if isinstance(layer, keras_sngd.LocalFisher) and layer._low_rank()]
        details.append(", ".join(f"{layer.name}: rank {layer._resolved_rank}, drift {drift(layer):.3f}, "
                                 f"{int(layer.refresh_count.numpy())} refreshes" for layer in fishers) or "dense")
    return losses, details


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,small_cnn,wide_mlp")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--samples", type=int, default=8192)
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}; SGD lr 0.1, batch 64, "
          f"{args.samples} images, seeds {args.seeds}")
    for model in args.models.split(","):
        _, epochs, consumers, variants = RUNS[model]
        print(f"\n{model}, {epochs} epochs, LocalFishers before {', '.join(consumers)}")
        print("| run | final training loss (mean) | per seed | low-rank layers after training (seed 0) |")
        print("|---|---|---|---|")
        for label in variants:
            losses, details = run(model, label, seeds, args.samples)
            print(f"| {label} | {np.mean(losses):.4f} | {' '.join(f'{value:.4f}' for value in losses)} | "
                  f"{details[0]} |", flush=True)


if __name__ == "__main__":
    main()
