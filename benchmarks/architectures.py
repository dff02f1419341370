"""SNGD on architectures the package does not ship, as a new user would try it (issue #8's protocol).

Each run: a fresh model (seed `--seed`, 0 by default) trained on the first `--samples` real Fashion-MNIST images, batch 64, no
shuffling, `--epochs` epochs; `adam:LR` is `keras.optimizers.Adam(LR)` on the plain model, `sgd:LR` plain
`SGD(LR)`, `sngd:LR` is `keras_sngd.reconstruct(model)` with its defaults and `SGD(LR)`, and
`sngd-attention-unwhitened:LR` the same with the attention layers excluded (how `reconstruct` treated
them before it whitened their query, key and value), `sngd-without-LAYER:LR` with the layer named LAYER
excluded (names as a fresh session gives them: `conv2d`, `conv2d_1`, `dense`, ...), `sngd-composites-whole:LR`
with the composite layers left whole (how `reconstruct` treated a KerasHub `TransformerEncoder` before it
whitened the layers inside it, `keras_sngd.InnerWhitening`), `sngd-state-unwhitened:LR` with the
recurrent kernels plain (`recurrent_state=False`: how `reconstruct` treated RNNs before it whitened the
state they read, `keras_sngd.RecurrentWhitening`); any kind followed by
`+frozen-depthwise` freezes the depthwise and separable convolutions first. `sngd-unbounded:LR` leaves
out the `StepBound`s before depthwise and separable convolutions (how `reconstruct` left those layers
before it bounded their steps), `sngd-bounded-anyway:LR` puts one before every such layer, also where
it feeds a normalization layer (`keras_sngd.layer_defaults.feeds_normalization`). Prints the training
loss after each epoch.

    python benchmarks/architectures.py --models transformer_rows,gru_rows
    python benchmarks/architectures.py --models transformer_rows --runs sngd-attention-unwhitened:0.03

The models (`python benchmarks/architectures.py --help`): a two-block pre-norm transformer over the 28
image rows (`MultiHeadAttention`, `LayerNormalization`, GELU MLP), the same from KerasHub's
`TransformerEncoder` layers, a GRU(64) over the rows, a CNN with
depthwise and separable convolutions (what `reconstruct` cannot whiten) after a Conv2D + BatchNorm, a
CNN with GroupNormalization, a 6-convolution plain CNN without normalization, and Keras's MobileNetV2
(alpha 0.35, on the images padded to 32x32x3 inside the model).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `python benchmarks/NAME.py` from the repository root: the `benchmarks` package is the root's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from keras import layers  # noqa: E402

import keras_sngd  # noqa: E402
import importlib  # noqa: E402

# The module, not the function `keras_sngd.reconstruct` that shadows it as an attribute of the package.
reconstruct_module = importlib.import_module("keras_sngd.reconstruct")
from benchmarks.stability_common import load_subset  # noqa: E402

DEFAULT_RUNS = "adam:0.003,adam:0.001,sgd:0.1,sngd:0.3,sngd:0.1,sngd:0.03,sngd:0.01"


def transformer_rows():
    x = inputs = keras.Input((28, 28))
    x = layers.Dense(64)(x)
    for _ in range(2):
        h = layers.LayerNormalization()(x)
        x = x + layers.MultiHeadAttention(4, 16)(h, h)
        h = layers.LayerNormalization()(x)
        x = x + layers.Dense(64)(layers.Dense(128, activation="gelu")(h))
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(10)(x))


def keras_hub_transformer_rows():
    """The transformer above built from KerasHub's `TransformerEncoder` (pre-norm, GELU): composite layers,
    whose inner layers `reconstruct` whitens through `keras_sngd.InnerWhitening`."""
    import keras_hub

    x = inputs = keras.Input((28, 28))
    x = layers.Dense(64)(x)
    for index in range(2):
        x = keras_hub.layers.TransformerEncoder(128, 4, activation="gelu", normalize_first=True,
                                                name=f"encoder_{index + 1}")(x)
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(10)(x))


def gru_rows():
    inputs = keras.Input((28, 28))
    return keras.Model(inputs, layers.Dense(10)(layers.GRU(64)(inputs)))


def separable_cnn():
    x = inputs = keras.Input((28, 28, 1))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(x)))
    x = layers.SeparableConv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(64, 1, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


def groupnorm_cnn():
    x = inputs = keras.Input((28, 28, 1))
    x = layers.ReLU()(layers.GroupNormalization(8)(layers.Conv2D(32, 3, padding="same")(x)))
    x = layers.ReLU()(layers.GroupNormalization(8)(layers.Conv2D(64, 3, strides=2, padding="same")(x)))
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


def plain_deep_cnn():
    x = inputs = keras.Input((28, 28, 1))
    for filters in (16, 16, 32, 32):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    for filters in (64, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.Dense(64, activation="relu")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(10)(x))


def mobilenet_v2():
    # Keras's MobileNetV2 (alpha 0.35, every depthwise convolution followed by BatchNormalization) on the
    # images padded to 32x32 and repeated to 3 channels inside the model.
    inputs = keras.Input((28, 28, 1))
    x = layers.ZeroPadding2D(2)(inputs)
    x = layers.Concatenate()([x, x, x])
    return keras.applications.MobileNetV2(input_tensor=x, weights=None, alpha=0.35, classes=10,
                                          classifier_activation=None)


MODELS = {
    "transformer_rows": transformer_rows,
    "keras_hub_transformer_rows": keras_hub_transformer_rows,
    "gru_rows": gru_rows,
    "separable_cnn": separable_cnn,
    "groupnorm_cnn": groupnorm_cnn,
    "plain_deep_cnn": plain_deep_cnn,
    "mobilenet_v2": mobilenet_v2,
}
_UNWHITENABLE = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def run(name, kind, learning_rate, images, labels, epochs, seed=0):
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = MODELS[name]()
    if kind.endswith("+frozen-depthwise"):
        # The layers SNGD cannot whiten, frozen: whether their (unbounded) steps are what breaks a run.
        kind = kind[: -len("+frozen-depthwise")]
        for layer in model.layers:
            if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
                layer.trainable = False
    if name.endswith("_rows"):
        images = images.reshape(-1, 28, 28)
    if kind == "sngd":
        model = keras_sngd.reconstruct(model)
    elif kind == "sngd-attention-unwhitened":
        excluded = [layer.name for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
        model = keras_sngd.reconstruct(model, exclude=excluded)
    elif kind == "sngd-unbounded":
        # No StepBound: the depthwise and separable convolutions excluded (how `reconstruct` left them before).
        model = keras_sngd.reconstruct(model, exclude=[l.name for l in model.layers if isinstance(l, _UNWHITENABLE)])
    elif kind == "sngd-bounded-anyway":
        # A StepBound also before the layers that feed a normalization layer (which `reconstruct` leaves out).
        original = reconstruct_module.feeds_normalization
        reconstruct_module.feeds_normalization = lambda layer: False
        try:
            model = keras_sngd.reconstruct(model)
        finally:
            reconstruct_module.feeds_normalization = original
    elif kind == "sngd-composites-whole":
        # The composite layers left whole: how `reconstruct` treated them before `InnerWhitening`.
        model = keras_sngd.reconstruct(model, exclude=[l.name for l in model.layers
                                                       if keras_sngd.inner_whitening.is_composite(l)])
    elif kind == "sngd-state-unwhitened":
        # The recurrent kernels plain: how `reconstruct` treated RNNs before `RecurrentWhitening`.
        model = keras_sngd.reconstruct(model, recurrent_state=False)
    elif kind.startswith("sngd-without-"):
        model = keras_sngd.reconstruct(model, exclude=[kind[len("sngd-without-"):]])
    elif kind not in ("adam", "sgd"):
        raise ValueError(f"Unknown run kind {kind!r}: adam, sgd, sngd, sngd-attention-unwhitened, "
                         "sngd-unbounded, sngd-bounded-anyway, sngd-composites-whole, sngd-state-unwhitened or "
                         "sngd-without-LAYER.")
    optimizer = keras.optimizers.Adam(learning_rate) if kind == "adam" else keras.optimizers.SGD(learning_rate)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    losses = model.fit(images, labels, batch_size=64, epochs=epochs, shuffle=False, verbose=0).history["loss"]
    return losses, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated KIND:LR")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the models' initialization seed")
    args = parser.parse_args()
    images, labels = load_subset(args.samples)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}; {args.samples} images, batch 64, "
          f"{args.epochs} epochs, seed {args.seed}")
    print("| model | run | lr | " + " | ".join(f"loss ep {e + 1}" for e in range(args.epochs)) + " | s |")
    print("|---|---|---|" + "---|" * (args.epochs + 1))
    for name in args.models.split(","):
        if name not in MODELS:
            raise ValueError(f"Unknown model {name!r}: {', '.join(MODELS)}.")
        for entry in args.runs.split(","):
            kind, learning_rate = entry.split(":")
            losses, seconds = run(name, kind, float(learning_rate), images, labels, args.epochs, args.seed)
            print(f"| {name} | {kind} | {float(learning_rate):g} | " + " | ".join(f"{loss:.3f}" for loss in losses)
                  + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
