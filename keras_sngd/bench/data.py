"""The main command's models and data: every reference model, its default dataset, the arrays it trains on.

The models are `keras_sngd.models.REFERENCE_MODELS`, so a model added there appears in `--model` without a
change here. Its default dataset is, in order: the builder's `DEFAULT_DATASET` attribute, then
`_DEFAULT_DATASETS` below, then Fashion-MNIST (every 28x28 image model trains on it). Image classifiers
are built as `builder(input_shape=..., classes=...)`; `lstm` is the language model and goes with `ptb`.
"""

import math
from typing import NamedTuple

import keras
import numpy as np

from keras_sngd.datasets.registry import KNOWN_DATASETS
from keras_sngd.models import REFERENCE_MODELS

# Models whose data is not Fashion-MNIST.
_DEFAULT_DATASETS = {"vgg16": "cifar10", "resnet18": "cifar10", "lstm": "ptb"}
LANGUAGE_MODELS = ("lstm",)
LANGUAGE_DATASETS = ("ptb",)


class Task(NamedTuple):
    """What the model predicts: `kind` is "classification" or "language_model"; `classes` the output size."""

    kind: str
    classes: int

    @property
    def metric(self):
        """The test metric the table reports: "test_accuracy" or "test_perplexity"."""
        return "test_perplexity" if self.kind == "language_model" else "test_accuracy"


class Data(NamedTuple):
    """Numpy `(inputs, targets)` pairs for training and testing, and the task."""

    train: tuple
    test: tuple
    task: Task


def model_names():
    return sorted(REFERENCE_MODELS)


def default_dataset(model):
    """The dataset `--model model` trains on when `--dataset` is not given."""
    builder = REFERENCE_MODELS[model]
    return getattr(builder, "DEFAULT_DATASET", None) or _DEFAULT_DATASETS.get(model, "fashion_mnist")


def check_model_and_dataset(model, dataset):
    """None when `model` can train on `dataset`, else the reason it cannot."""
    if dataset not in KNOWN_DATASETS:
        return f"unknown dataset {dataset!r}; choose from {', '.join(KNOWN_DATASETS)}"
    if (model in LANGUAGE_MODELS) != (dataset in LANGUAGE_DATASETS):
        return (f"the language model{'s' if len(LANGUAGE_MODELS) > 1 else ''} ({', '.join(LANGUAGE_MODELS)}) "
                f"go with {', '.join(LANGUAGE_DATASETS)}, and only they; got --model {model} --dataset {dataset}")
    return None


def load_data(dataset, data_dir=None, download=True, samples=None, test_samples=None, sequence_length=35):
    """The training and test arrays of `dataset`: images scaled to [0, 1], or word windows for `ptb`."""
    from keras_sngd.datasets import language_model_windows
    from keras_sngd.datasets import load_dataset

    if dataset in LANGUAGE_DATASETS:
        corpus = load_dataset(dataset, data_dir=data_dir)
        train = language_model_windows(corpus.train, sequence_length)
        test = language_model_windows(corpus.test, sequence_length)
        task = Task("language_model", len(corpus.vocabulary))
    else:
        splits = [load_dataset(dataset, split, data_dir=data_dir, download=download) for split in ("train", "test")]
        train, test = [(images.astype("float32") / 255.0, labels.astype("int32")) for images, labels in splits]
        task = Task("classification", int(train[1].max()) + 1)
    if samples:
        train = tuple(array[:samples] for array in train)
    if test_samples:
        test = tuple(array[:test_samples] for array in test)
    return Data(train, test, task)


def build_plain_model(model, data, l2=0.0, lstm_layers=2):
    """The reference model `model`, built for `data`, with an L2 penalty on every kernel when `l2 > 0`."""
    builder = REFERENCE_MODELS[model]
    if data.task.kind == "language_model":
        plain = builder(vocabulary_size=data.task.classes, num_layers=lstm_layers)
    else:
        plain = builder(input_shape=data.train[0].shape[1:], classes=data.task.classes)
    if l2:
        plain = keras.models.clone_model(plain, clone_function=_with_l2(l2))
    return plain


def _with_l2(l2):
    def clone(layer):
        config = layer.get_config()
        if "kernel_regularizer" in config:
            config["kernel_regularizer"] = keras.regularizers.L2(l2)
        return layer.__class__.from_config(config)

    return clone


def perplexity(loss):
    """`exp(loss)`, capped so a diverged run gives a large finite number instead of an overflow."""
    return float(math.exp(min(float(loss), 50.0))) if np.isfinite(loss) else float("nan")
