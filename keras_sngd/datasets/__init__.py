"""Data loading for tests, examples and benchmarks (downloads only when asked)."""

from keras_sngd.datasets.cifar10 import load_cifar10_directory
from keras_sngd.datasets.download import download_dataset
from keras_sngd.datasets.idx import load_idx_directory
from keras_sngd.datasets.idx import read_idx
from keras_sngd.datasets.registry import load_dataset
from keras_sngd.datasets.text import TextCorpus
from keras_sngd.datasets.text import language_model_windows
from keras_sngd.datasets.text import load_text_corpus

__all__ = [
    "TextCorpus",
    "download_dataset",
    "language_model_windows",
    "load_cifar10_directory",
    "load_dataset",
    "load_idx_directory",
    "load_text_corpus",
    "read_idx",
]
