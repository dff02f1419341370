"""VGG-16 for 32x32 images (CIFAR-10/100)."""

import keras

from keras_sngd.models._validation import check_bool
from keras_sngd.models._validation import check_name
from keras_sngd.models._validation import check_positive_float
from keras_sngd.models._validation import check_positive_int
from keras_sngd.models._validation import check_shape
from keras_sngd.models._validation import scaled

# Output channels of each 3x3 convolution; "M" is a 2x2 max pooling.
VGG16_CONFIGURATION = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_cifar(input_shape=(32, 32, 3), classes=10, batch_norm=True, width=1.0, name="vgg16_cifar"):
    """VGG-16 as usually adapted to CIFAR: 13 3x3 convolutions, five max poolings, one Dense classifier.

    Architecture: the 13 `Conv2D(c, 3, padding="same")` layers of VGG-16 with
    `c` = 64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M (`M`: 2x2 max
    pooling), each followed by `BatchNormalization` (when `batch_norm`) and ReLU; then `Flatten` and a
    single `Dense(classes)` producing logits (no softmax). The classifier is this one Dense layer, not
    VGG's ImageNet head: at 32x32 the five poolings leave a 1x1x512 map, so this is the common CIFAR
    variant (as in the widely used `pytorch-cifar` VGG). It stands for the VGG-16 network of Liu et al.'s
    CIFAR image-classification experiments. At `width=1.0` with 10 classes it has 14,728,266 trainable
    weights (plus 8,448 BatchNorm moving statistics). `reconstruct` inserts 14 `LocalFisher` layers: one
    per convolution and one before the Dense; BatchNormalization layers are reported as skipped.

    Inputs are expected as float images scaled to [0, 1]; the model contains no preprocessing layer.

    Args:
        input_shape: `(height, width, channels)`, positive ints; height and width must be at least 32 (five
            poolings; larger inputs give a larger map before `Flatten`). Defaults to `(32, 32, 3)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        batch_norm: bool, a `BatchNormalization` after every convolution (convolutions keep their bias
            either way). Defaults to `True`.
        width: float > 0, multiplies every convolution's channel count (rounded, at least 1), e.g. `0.125`
            for a fast test model. Defaults to `1.0`.
        name: the model's name. Defaults to `"vgg16_cifar"`.

    Returns:
        A Functional `keras.Model`, built.
    """
    input_shape = check_shape("input_shape", input_shape, rank=(3,))
    if min(input_shape[:2]) < 32:
        raise ValueError(f"`input_shape` height and width must be at least 32 (five 2x2 poolings). "
                         f"Received: input_shape={input_shape!r}")
    classes = check_positive_int("classes", classes)
    batch_norm = check_bool("batch_norm", batch_norm)
    width = check_positive_float("width", width)
    name = check_name("name", name)

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    block, index = 1, 1
    for item in VGG16_CONFIGURATION:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
            block, index = block + 1, 1
            continue
        prefix = f"block{block}_conv{index}"
        x = keras.layers.Conv2D(scaled(item, width), 3, padding="same", name=prefix)(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
        x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        index += 1
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
