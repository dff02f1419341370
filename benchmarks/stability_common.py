"""Shared pieces of the stability experiments (issue 8): data subset, models, and the variants compared.

A variant ("fix") maps a plain model to its SNGD reconstruction; `none` is `keras_sngd.reconstruct(model)`
with its defaults, what a new user gets; `layerdefaults` forces the LocalFisher defaults (the state of
the package before `keras_sngd.layer_defaults`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import REFERENCE_MODELS  # noqa: E402

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def load_subset(samples, split="train"):
    """The first `samples` Fashion-MNIST images as float32 in [0, 1], shape (n, 28, 28, 1), and int32 labels."""
    images, labels = load_dataset("fashion_mnist", split)
    images = images[:samples].reshape(-1, 28, 28, 1).astype("float32") / 255.0
    return images, labels[:samples].astype("int32")


def plain_model(name):
    return REFERENCE_MODELS[name](input_shape=(28, 28, 1), classes=10)


def output_positions(layer):
    """The number of output positions of a convolution (its kernel gradient sums over them), else 1."""
    if not isinstance(layer, _CONVOLUTIONS):
        return 1
    count = 1
    for size in layer.output.shape[1:-1]:
        count *= int(size)
    return count


def _spatial(model):
    factors = {layer.name: {"activation_factor": float(output_positions(layer))}
               for layer in model.layers if isinstance(layer, _CONVOLUTIONS)}
    return keras_sngd.reconstruct(model, per_layer_arguments=factors)


FIXES = {
    "none": lambda model: keras_sngd.reconstruct(model),
    "spatial": _spatial,
}


def parse_variant(spec):
    """`"none"`, or tokens joined by `+`: a name in FIXES, `clip` (SGD's `global_clipnorm=1`),
    `stepclip:R` (every variable's SGD step at most R in norm: `clipnorm=R / lr`), or
    `layerdefaults` (the LocalFisher defaults, not the
    arguments `reconstruct` picks for CNNs and RNNs), `plain` (the model without reconstruction, SGD),
    `adam` (the plain model, Adam), or
    `key=value` LocalFisher arguments for every inserted layer (`damping=0.1+update_every=10`)."""
    fix, arguments, clip = "none", {}, False
    for token in spec.split("+"):
        if token in ("plain", "adam"):
            fix = token
        elif token == "clip":
            clip = True
        elif token == "layerdefaults":
            # The LocalFisher defaults, without the arguments reconstruct picks for CNNs and RNNs.
            arguments.update({"damping": 0.01, "max_step": None, "update_every": 50})
        elif token.startswith("stepclip:"):
            clip = ("step", float(token.split(":")[1]))
        elif "=" in token:
            key, value = token.split("=", 1)
            arguments[key] = _number(value)
        elif token in FIXES:
            fix = token
        else:
            raise ValueError(f"unknown variant token {token!r} in {spec!r}")
    return fix, arguments, clip


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def sngd_model(name, spec="none"):
    fix, arguments, _ = parse_variant(spec)
    model = plain_model(name)
    if fix in ("plain", "adam"):
        return model
    if fix == "spatial":
        factors = {layer.name: {"activation_factor": float(output_positions(layer))}
                   for layer in model.layers if isinstance(layer, _CONVOLUTIONS)}
        return keras_sngd.reconstruct(model, local_fisher_arguments=arguments, per_layer_arguments=factors)
    return keras_sngd.reconstruct(model, local_fisher_arguments=arguments)


def sgd(learning_rate, spec="none"):
    fix, _, clip = parse_variant(spec)
    if fix == "adam":
        return keras.optimizers.Adam(learning_rate)
    if isinstance(clip, tuple):
        # Each variable's step bounded by the radius: SGD's per-variable clipnorm at radius / lr.
        return keras.optimizers.SGD(learning_rate, clipnorm=clip[1] / learning_rate)
    return keras.optimizers.SGD(learning_rate, global_clipnorm=1.0 if clip else None)
