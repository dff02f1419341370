"""MLPs wider than the paper's through `reconstruct`, and by hand: does SNGD train, with which damping?

For each case `WIDTH:BATCH:LR`, a 784-WIDTH-WIDTH-WIDTH-10 ReLU MLP (`--hidden` hidden layers) on the first
`--images` real Fashion-MNIST training images, SGD at LR, `--epochs` epochs, seed 0; the per-epoch
training losses, each LocalFisher's damping, refreshes and batch-leverage scale (`keras_sngd.leverage`). Variants (`--variants`, comma-separated):

- `reconstruct`: `keras_sngd.reconstruct(model)` as a user calls it (its damping rules: 1.0 on the raw
  pixels, `layer_defaults.width_damping` before wider Dense inputs, the trust region, the 10-step check);
- `adaptive-everywhere`: `reconstruct` with `adaptive_statistics=True` on every LocalFisher, the hidden
  inputs too (`reconstruct` passes it only before wide fixed features,
  `layer_defaults.fixed_feature_statistics`);
- `no-width-rule`: the same with `width_damping` off (every hidden input at the layer's damping, 0.01);
- `no-width-rule-50`: that, checking every 50 steps (the previous `reconstruct`);
- `plain`: the MLP without LocalFisher, plain SGD at LR (the reference SNGD has to beat);
- `adam`: the MLP without LocalFisher, `Adam(1e-3)` (LR ignored);
- `by-hand-K`: `LocalFisher(update_every=K)` inserted by hand before each Dense layer (damping 0.01 on
  the pixels too, no trust region, no batch-leverage scale), e.g. `by-hand-10`, `by-hand-50`;
- `by-hand-K-leverage`: the same with `leverage_scaling=True` (`keras_sngd.leverage`).

    python benchmarks/wide_mlp.py                                    # about 4 minutes on 2 cores
    python benchmarks/wide_mlp.py --cases 80:50:0.1 --hidden 2 --variants by-hand-10,by-hand-20,by-hand-50
                                                                     # the paper MLP built by hand
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd import LocalFisher  # noqa: E402
from keras_sngd import layer_defaults  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402

DEFAULT_CASES = "512:64:0.1,512:64:0.3,512:16:0.1,1024:32:0.3,80:64:0.1"


def build(width, hidden, variant):
    """The model for a variant (see the module docstring)."""
    if variant.startswith("by-hand-"):
        every, _, leverage = variant[len("by-hand-"):].partition("-")
        if leverage not in ("", "leverage"):
            raise ValueError(f"Unknown variant {variant!r}.")
        layers = [keras.Input((784,))]
        for units in [width] * hidden + [10]:
            layers += [LocalFisher(update_every=int(every), leverage_scaling=leverage == "leverage"),
                       keras.layers.Dense(units, activation="relu" if units != 10 else None)]
        return keras.Sequential(layers)
    plain = keras.Sequential([keras.Input((784,))] + [keras.layers.Dense(width, activation="relu")
                                                      for _ in range(hidden)] + [keras.layers.Dense(10)])
    if variant in ("plain", "adam"):
        return plain
    if variant == "reconstruct":
        return keras_sngd.reconstruct(plain)
    if variant == "adaptive-everywhere":
        return keras_sngd.reconstruct(plain, local_fisher_arguments={"adaptive_statistics": True})
    if variant in ("no-width-rule", "no-width-rule-50"):
        saved = layer_defaults.FEATURES_PER_DAMPING
        layer_defaults.FEATURES_PER_DAMPING = float("inf")
        try:
            arguments = {"update_every": 50} if variant.endswith("-50") else None
            return keras_sngd.reconstruct(plain, local_fisher_arguments=arguments)
        finally:
            layer_defaults.FEATURES_PER_DAMPING = saved
    raise ValueError(f"Unknown variant {variant!r}.")


def run(case, variant, data, args):
    width, batch, rate = case.split(":")
    keras.utils.set_random_seed(0)
    model = build(int(width), args.hidden, variant)
    optimizer = keras.optimizers.Adam(1e-3) if variant == "adam" else keras.optimizers.SGD(float(rate))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(*data, batch_size=int(batch), epochs=args.epochs, shuffle=False, verbose=0).history["loss"]
    fishers = [layer for layer in model.layers if isinstance(layer, LocalFisher)]
    return losses, [(layer.damping, int(layer.refresh_count.numpy()),
                     float(layer.leverage.numpy()) if layer.leverage_scaling else 1.0) for layer in fishers]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated WIDTH:BATCH:LR")
    parser.add_argument("--variants", default="reconstruct,no-width-rule,no-width-rule-50")
    parser.add_argument("--hidden", type=int, default=3, help="hidden layers")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    images, labels = load_dataset("fashion_mnist", "train")
    data = (images[: args.images].reshape(-1, 784).astype("float32") / 255.0, labels[: args.images])
    print(f"{args.hidden} hidden layers, {args.images} images, {args.epochs} epochs, SGD, seed 0; keras "
          f"{keras.__version__}, backend {keras.backend.backend()}")
    print("| width:batch:lr | variant | loss per epoch | (damping, refreshes, batch-leverage scale c) per LocalFisher |"
          "\n|---|---|---|---|")
    for case in args.cases.split(","):
        for variant in args.variants.split(","):
            losses, fishers = run(case, variant, data, args)
            print(f"| {case} | {variant} | {' '.join(f'{x:.4f}' for x in losses)} | "
                  f"{', '.join(f'({d:g}, {r}, {c:.2f})' for d, r, c in fishers)} |", flush=True)


if __name__ == "__main__":
    main()
