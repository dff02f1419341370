"""Small convolutional, residual and recurrent networks for 28x28 images (Fashion-MNIST), CPU-sized.

Each builder takes `input_shape` and `classes` like the other reference models and reshapes the image
itself where its first layer needs another shape (the LSTM reads the image row by row), so a command
that feeds `(28, 28, 1)` images can use any of them unchanged. They stand in, at a size that trains a few
epochs on two CPU cores, for the paper's convolutional (VGG-16, ResNet-18) and recurrent (LSTM) networks:
the same layer kinds, with and without BatchNormalization, with and without residual connections.
"""

import keras

from keras_sngd.models._validation import check_name
from keras_sngd.models._validation import check_positive_int
from keras_sngd.models._validation import check_shape


def plain_cnn(input_shape=(28, 28, 1), classes=10, name="plain_cnn"):
    """A plain convolutional network without normalization layers.

    Architecture: `Conv2D(32, 3, relu, same)` -> `Conv2D(32, 3, relu, same)` -> `MaxPooling2D(2)` ->
    `Conv2D(64, 3, relu, same)` -> `GlobalAveragePooling2D` -> `Dense(64, relu)` -> `Dense(classes)`
    (logits). `reconstruct` puts a `LocalFisher` before each of its three convolutions and two Dense layers.

    Args:
        input_shape: `(height, width, channels)`, positive ints, height and width >= 2. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        name: the model's name. Defaults to `"plain_cnn"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape, classes, name = _image_arguments(input_shape, classes, name)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_3"),
            keras.layers.GlobalAveragePooling2D(name="global_pool"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def cnn_bn(input_shape=(28, 28, 1), classes=10, name="cnn_bn"):
    """The plain CNN with BatchNormalization after its first convolution.

    Architecture: `Conv2D(32, 3, same)` -> `BatchNormalization` -> `ReLU` -> `Conv2D(32, 3, relu, same)`
    -> `MaxPooling2D(2)` -> `Conv2D(64, 3, relu, same)` -> `GlobalAveragePooling2D` -> `Dense(64, relu)`
    -> `Dense(classes)` (logits). `reconstruct` puts a `LocalFisher` before each convolution and Dense
    layer and reports the BatchNormalization as skipped.

    Args:
        input_shape: `(height, width, channels)`, positive ints, height and width >= 2. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        name: the model's name. Defaults to `"cnn_bn"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape, classes, name = _image_arguments(input_shape, classes, name)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", name="conv_1"),
            keras.layers.BatchNormalization(name="bn_1"),
            keras.layers.ReLU(name="relu_1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_3"),
            keras.layers.GlobalAveragePooling2D(name="global_pool"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def resnet_small(input_shape=(28, 28, 1), classes=10, name="resnet_small"):
    """A small pre-activation ResNet (He et al. 2016, "Identity Mappings"): two residual blocks.

    Architecture: stem `Conv2D(16, 3, same, no bias)`; block 1 at 16 channels, stride 1, identity
    shortcut; block 2 at 32 channels, stride 2, shortcut `Conv2D(32, 1, stride 2, no bias)` on the
    pre-activated input. A block is `BN -> ReLU -> Conv2D(3x3, stride) -> BN -> ReLU -> Conv2D(3x3)`, added to
    the shortcut. Then `BN -> ReLU -> GlobalAveragePooling2D -> Dense(classes)` (logits). Convolutions have
    no bias (a BatchNormalization follows each, or the sum does). `reconstruct` puts a `LocalFisher` before
    each of the six convolutions and the Dense layer, and reports the five BatchNormalizations as skipped.

    Args:
        input_shape: `(height, width, channels)`, positive ints, height and width >= 2. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        name: the model's name. Defaults to `"resnet_small"`.

    Returns:
        A Functional `keras.Model`, built.
    """
    input_shape, classes, name = _image_arguments(input_shape, classes, name)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    for block, (channels, stride) in enumerate(((16, 1), (32, 2)), start=1):
        prefix = f"block{block}"
        activated = keras.layers.BatchNormalization(name=f"{prefix}_bn_1")(x)
        activated = keras.layers.ReLU(name=f"{prefix}_relu_1")(activated)
        if stride != 1 or x.shape[-1] != channels:
            shortcut = keras.layers.Conv2D(
                channels, 1, strides=stride, use_bias=False, name=f"{prefix}_shortcut"
            )(activated)
        else:
            shortcut = x
        y = keras.layers.Conv2D(
            channels, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv_1"
        )(activated)
        y = keras.layers.ReLU(name=f"{prefix}_relu_2")(keras.layers.BatchNormalization(name=f"{prefix}_bn_2")(y))
        y = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"{prefix}_conv_2")(y)
        x = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    x = keras.layers.ReLU(name="final_relu")(keras.layers.BatchNormalization(name="final_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def lstm_rows(input_shape=(28, 28, 1), classes=10, units=64, name="lstm_rows"):
    """An LSTM that reads an image row by row (the paper's LSTM on MNIST, Fashion-MNIST here).

    Architecture: `Reshape((height, width * channels))` (one time step per image row) -> `LSTM(units)`
    (its last output) -> `Dense(classes)` (logits). `reconstruct` puts a `LocalFisher` before the LSTM
    (whitening its input kernel's input, one row of pixels, over batch and time) and before the Dense.

    Args:
        input_shape: `(height, width, channels)` or `(time_steps, features)`, positive ints. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        units: int >= 1, the LSTM's state size. Defaults to `64`.
        name: the model's name. Defaults to `"lstm_rows"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape = check_shape("input_shape", input_shape, rank=(2, 3))
    classes = check_positive_int("classes", classes)
    units = check_positive_int("units", units)
    name = check_name("name", name)
    steps, features = input_shape[0], 1
    for size in input_shape[1:]:
        features *= size
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Reshape((steps, features), name="rows"),
            keras.layers.LSTM(units, name="lstm"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def deep_plain_cnn(input_shape=(28, 28, 1), classes=10, depth=16, width=16, name="deep_plain_cnn"):
    """A deep VGG-like chain without normalization: `depth - 2` 3x3 convolutions and two Dense layers.

    Architecture: `depth - 2` times `Conv2D(width, 3, relu, same)`, with a `MaxPooling2D(2)` after the
    convolutions `depth // 4` and `depth // 2` (counted from 0) -> `GlobalAveragePooling2D` ->
    `Dense(64, relu)` -> `Dense(classes)` (logits). `depth` parameterized layers and no normalization: the
    case where `reconstruct` shrinks the trust radius with depth (`keras_sngd.layer_defaults.trust_radius`,
    `benchmarks/deep_plain.py`). Not one of `REFERENCE_MODELS`.

    Args:
        input_shape: `(height, width, channels)`, positive ints, height and width >= 4. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        depth: int >= 3, the number of parameterized layers. Defaults to `16`.
        width: int >= 1, the convolutions' channels. Defaults to `16`.
        name: the model's name. Defaults to `"deep_plain_cnn"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape, classes, name = _image_arguments(input_shape, classes, name)
    depth, width = check_positive_int("depth", depth), check_positive_int("width", width)
    if depth < 3:
        raise ValueError(f"`depth` must be at least 3 (a convolution and two Dense layers). Received: depth={depth}")
    if min(input_shape[:2]) < 4:
        raise ValueError(f"`input_shape` must be at least 4x4 (two 2x2 poolings). Received: input_shape={input_shape!r}")
    layers = [keras.Input(input_shape)]
    for index in range(depth - 2):
        layers.append(keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv_{index + 1}"))
        if index in (depth // 4, depth // 2):
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool_{index + 1}"))
    layers += [
        keras.layers.GlobalAveragePooling2D(name="global_pool"),
        keras.layers.Dense(64, activation="relu", name="dense"),
        keras.layers.Dense(classes, name="logits"),
    ]
    return keras.Sequential(layers, name=name)


def _image_arguments(input_shape, classes, name):
    input_shape = check_shape("input_shape", input_shape, rank=(3,))
    if min(input_shape[:2]) < 2:
        raise ValueError(f"`input_shape` must be at least 2x2 (one 2x2 pooling or stride-2 convolution). "
                         f"Received: input_shape={input_shape!r}")
    return input_shape, check_positive_int("classes", classes), check_name("name", name)
