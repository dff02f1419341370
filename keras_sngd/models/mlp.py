"""The paper's fully connected network, and a small CNN, for MNIST / Fashion-MNIST."""

import numbers

import keras

from keras_sngd.models._validation import check_name
from keras_sngd.models._validation import check_positive_int
from keras_sngd.models._validation import check_shape


def paper_mlp(input_shape=(28, 28, 1), hidden_units=(80, 80), classes=10, activation="relu", name="paper_mlp"):
    """The paper's multilayer perceptron: 784-80-80-10 with ReLU, logits out.

    Architecture: `Flatten` (left out when `input_shape` is already flat, i.e. has one axis), then one
    `Dense(units, activation)` per entry of `hidden_units`, then `Dense(classes)` with no activation (logits;
    train with `SparseCategoricalCrossentropy(from_logits=True)`). With the defaults this is the
    784-80-80-10 ReLU network of Liu et al.'s MNIST / Fashion-MNIST experiments; `reconstruct` puts a
    `LocalFisher` before each of its `len(hidden_units) + 1` Dense layers.

    Args:
        input_shape: tuple of positive ints, the shape of one example (no batch axis). Defaults to
            `(28, 28, 1)`; `(784,)` gives a model without `Flatten`.
        hidden_units: tuple of positive ints, the width of each hidden Dense layer (may be empty: a linear
            classifier). Defaults to `(80, 80)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        activation: the hidden layers' activation, a name or callable accepted by `keras.activations.get`.
            Defaults to `"relu"`.
        name: the model's name. Defaults to `"paper_mlp"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape = check_shape("input_shape", input_shape)
    try:
        hidden = tuple(hidden_units)
    except TypeError:
        hidden = None
    if hidden is None or not all(_positive_int(units) for units in hidden):
        raise ValueError(f"`hidden_units` must be a tuple of positive ints. Received: hidden_units={hidden_units!r}")
    classes = check_positive_int("classes", classes)
    if activation is None or (not isinstance(activation, str) and not callable(activation)):
        raise ValueError(f"`activation` must be an activation name or callable. Received: activation={activation!r}")
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(f"`activation` is not a known Keras activation. Received: activation={activation!r}") from None
    name = check_name("name", name)

    layers = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten(name="flatten"))
    for index, units in enumerate(hidden):
        layers.append(keras.layers.Dense(int(units), activation=activation, name=f"dense_{index + 1}"))
    layers.append(keras.layers.Dense(classes, name="logits"))
    return keras.Sequential(layers, name=name)


def small_cnn(input_shape=(28, 28, 1), classes=10, name="small_cnn"):
    """A small convolutional network for Fashion-MNIST that trains a few epochs on two CPU cores in about a minute.

    Architecture: `Conv2D(16, 3, relu)` -> `MaxPooling2D(2)` -> `Conv2D(32, 3, relu)` -> `MaxPooling2D(2)`
    -> `Flatten` -> `Dense(64, relu)` -> `Dense(classes)` (logits). Convolutions are `valid`-padded, so
    `LocalFisher(center=True)` centering is exact for them. It is not one of the paper's networks: it stands
    in, at a CPU-friendly size, for the paper's convolutional experiments, with the same layer kinds (four
    layers get a `LocalFisher` from `reconstruct`: two Conv2D, two Dense). The input must be at least 10x10.

    Args:
        input_shape: `(height, width, channels)`, positive ints, height and width >= 10. Defaults to
            `(28, 28, 1)`.
        classes: int >= 1, the number of output logits. Defaults to `10`.
        name: the model's name. Defaults to `"small_cnn"`.

    Returns:
        A `keras.Sequential` model, built.
    """
    input_shape = check_shape("input_shape", input_shape, rank=(3,))
    if min(input_shape[:2]) < 10:
        raise ValueError(f"`input_shape` must be at least 10x10 (two valid 3x3 convolutions and two 2x2 "
                         f"poolings). Received: input_shape={input_shape!r}")
    classes = check_positive_int("classes", classes)
    name = check_name("name", name)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(2, name="pool_1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(2, name="pool_2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def _positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
