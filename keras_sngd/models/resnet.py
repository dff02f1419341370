"""ResNet-18 for 32x32 images (CIFAR-10/100)."""

import keras

from keras_sngd.models._validation import check_name
from keras_sngd.models._validation import check_positive_float
from keras_sngd.models._validation import check_positive_int
from keras_sngd.models._validation import check_shape
from keras_sngd.models._validation import scaled

# (channels, stride of the first block) of each stage; every stage has two BasicBlocks.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
_BLOCKS_PER_STAGE = 2


def resnet18_cifar(input_shape=(32, 32, 3), classes=10, width=1.0, name="resnet18_cifar"):
    """ResNet-18 as usually adapted to CIFAR (He et al. 2016, with a 3x3 stem and no stem max pooling).

    Architecture: stem `Conv2D(64, 3, padding="same", use_bias=False)` -> BatchNorm -> ReLU (no max
    pooling); four stages of two BasicBlocks with 64, 128, 256 and 512 channels, the first block of each
    stage with stride 1, 2, 2, 2. A BasicBlock is conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, added to
    the shortcut, then ReLU; the shortcut is the identity, or a 1x1 `Conv2D` (with the block's stride) ->
    BN where the shape changes (the first block of stages 2-4). Then `GlobalAveragePooling2D` and
    `Dense(classes)` producing logits (no softmax). Convolutions have no bias (BatchNorm follows each).
    This is the ResNet-18 of the widely used `pytorch-cifar` code and stands for the ResNet-18 network of
    Liu et al.'s CIFAR image-classification experiments. At `width=1.0` with 10 classes it has 11,173,962
    trainable weights (plus 9,600 BatchNorm moving statistics). `reconstruct` inserts 21 `LocalFisher`
    layers: 17 3x3 convolutions, 3 shortcut 1x1 convolutions and the Dense; the 20 BatchNormalization
    layers are reported as skipped.

    Inputs are expected as float images scaled to [0, 1]; the model contains no preprocessing layer.

    Args:
        input_shape: `(height, width, channels)`, positive ints. Defaults to `(32, 32, 3)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        width: float > 0, multiplies every convolution's channel count (rounded, at least 1), e.g. `0.125`
            for a fast test model. Defaults to `1.0`.
        name: the model's name. Defaults to `"resnet18_cifar"`.

    Returns:
        A Functional `keras.Model`, built.
    """
    input_shape = check_shape("input_shape", input_shape, rank=(3,))
    classes = check_positive_int("classes", classes)
    width = check_positive_float("width", width)
    name = check_name("name", name)

    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(scaled(64, width), 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, (channels, stride) in enumerate(RESNET18_STAGES, start=1):
        for block in range(1, _BLOCKS_PER_STAGE + 1):
            x = _basic_block(x, scaled(channels, width), stride if block == 1 else 1, f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _basic_block(x, channels, stride, prefix):
    shortcut = x
    y = keras.layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{prefix}_bn1")(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{prefix}_bn2")(y)
    if stride != 1 or x.shape[-1] != channels:
        shortcut = keras.layers.Conv2D(
            channels, 1, strides=stride, use_bias=False, name=f"{prefix}_shortcut_conv"
        )(x)
        shortcut = keras.layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(shortcut)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu2")(y)
