"""`load_dataset`: a named dataset from local files, then TensorFlow Datasets, downloading only when asked."""

import os
import sys

import numpy as np

from keras_sngd.datasets.cifar10 import CIFAR10_BATCHES_DIRECTORY
from keras_sngd.datasets.cifar10 import load_cifar10_directory
from keras_sngd.datasets.download import DOWNLOADABLE_DATASETS
from keras_sngd.datasets.download import download_dataset
from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY
from keras_sngd.datasets.idx import load_idx_directory
from keras_sngd.datasets.text import PTB_FILES
from keras_sngd.datasets.text import load_text_corpus

# A directory with one subdirectory per dataset, named like it: `$KERAS_SNGD_DATA/cifar10/`, ...
DATA_ENVIRONMENT_VARIABLE = "KERAS_SNGD_DATA"

KNOWN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "ptb")
SPLITS = ("train", "test")

# TensorFlow Datasets has these under the same names; it has no Penn Treebank.
_TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")

_IDX_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
_LOCAL_FILES = {
    "mnist": f"the four MNIST IDX files ({_IDX_FILES}; each may be gzipped, .gz)",
    "fashion_mnist": f"the four Fashion-MNIST IDX files ({_IDX_FILES}; each may be gzipped, .gz)",
    "cifar10": (
        "the CIFAR-10 python batches (data_batch_1 .. data_batch_5 and test_batch, from the official "
        f"cifar-10-python.tar.gz, extracted; the {CIFAR10_BATCHES_DIRECTORY}/ directory itself may sit there too)"
    ),
    "ptb": (
        f"the Penn Treebank text files ({', '.join(PTB_FILES)}: the data/ directory of Mikolov's "
        "simple-examples archive, simple-examples.tgz)"
    ),
}


def _read_local(name, directory, split):
    """The dataset from `directory` in its local format; `FileNotFoundError` when its files are not there."""
    if name == "ptb":
        return load_text_corpus(directory)
    if name == "cifar10":
        return load_cifar10_directory(directory, split)
    images, labels = load_idx_directory(directory, split)
    return images[..., np.newaxis], labels.astype(np.int64)


def _local_directories(name, data_dir):
    """The directories to look in, in order: `data_dir`, its `name/`, `$KERAS_SNGD_DATA/name/`, the defaults."""
    directories = []
    if data_dir is not None:
        directories += [os.fspath(data_dir), os.path.join(os.fspath(data_dir), name)]
    environment = os.environ.get(DATA_ENVIRONMENT_VARIABLE)
    if environment:
        directories.append(os.path.join(environment, name))
    if name == "fashion_mnist":
        directories.append(FASHION_MNIST_DIRECTORY)
    return directories


def _read_tfds(name, split, data_dir):
    """`((images, labels), None)` from TensorFlow Datasets, or `(None, why_not)` when it does not have them.

    Never downloads: "not prepared" is "not available" (downloading goes through Keras's loaders, which need
    no extra package and show a progress bar).
    """
    if name not in _TFDS_DATASETS:
        return None, "TensorFlow Datasets has no Penn Treebank."
    try:
        import tensorflow_datasets as tfds  # slow to import: only when local files are missing
    except ImportError:
        return None, "tensorflow_datasets is not installed (`pip install tensorflow-datasets`)."
    try:
        images, labels = tfds.load(
            name, split=split, data_dir=data_dir, download=False, as_supervised=True, batch_size=-1
        )
    except (AssertionError, tfds.core.DatasetNotFoundError) as error:
        where = "its default data directory" if data_dir is None else repr(os.fspath(data_dir))
        return None, f"TensorFlow Datasets has not prepared {name!r} in {where} ({type(error).__name__}: {error})"
    images = np.asarray(tfds.as_numpy(images)).astype(np.uint8, copy=False)
    labels = np.asarray(tfds.as_numpy(labels)).astype(np.int64, copy=False)
    return (images, labels), None


def _download(name, split):
    """`((images, labels), None)` from Keras's loader, or `(None, why_not)` when the download failed."""
    print(f"{name!r} was not found locally: downloading it with keras.datasets.{name}.load_data() "
          "(once; cached in ~/.keras/datasets).", file=sys.stderr, flush=True)
    try:
        return download_dataset(name, split), None
    except Exception as error:  # Keras raises a plain Exception for a failed fetch
        return None, (f"Downloading it with keras.datasets.{name}.load_data() failed (is this machine offline?): "
                      f"{type(error).__name__}: {error}")


def _not_found_message(name, split, data_dir, searched, reasons, tried_download):
    local = _LOCAL_FILES[name]
    places = "a directory passed as `data_dir` (the main command's `--data-dir`)" if data_dir is None else f"{os.fspath(data_dir)!r}"
    which = f"Dataset {name!r}" + ("" if name == "ptb" else f" (split {split!r})")
    outcome = "and downloading it failed" if tried_download else "and nothing was downloaded"
    lines = [f"{which} is not available locally, {outcome}."]
    lines.append("Searched: " + (", ".join(repr(directory) for directory in searched) or "no local directory") + ".")
    lines.extend(reason for reason in reasons if reason)
    lines.append("To get it:")
    if name == "fashion_mnist":
        lines.append(
            "  - On Debian or Ubuntu: `apt-get install dataset-fashion-mnist` (installs the files to "
            f"{FASHION_MNIST_DIRECTORY}, which is found automatically)."
        )
    lines.append(
        f"  - Put {local} in {places} (or in its {name}/ subdirectory), or in ${DATA_ENVIRONMENT_VARIABLE}/{name}/ "
        f"with the environment variable {DATA_ENVIRONMENT_VARIABLE} naming the parent directory."
    )
    if name in DOWNLOADABLE_DATASETS:
        lines.append(
            f"  - When online: call load_dataset({name!r}, ..., download=True) (the main command does), which "
            f"runs keras.datasets.{name}.load_data() once and caches the files in ~/.keras/datasets."
        )
    if name in _TFDS_DATASETS:
        build = f"tfds build {name}" + ("" if data_dir is None else f" --data_dir {os.fspath(data_dir)}")
        lines.append(f"  - Or, with TensorFlow Datasets: run `{build}` once when online.")
    return "\n".join(lines)


def load_dataset(name, split="train", data_dir=None, download=False):
    """A named dataset as numpy arrays, from local files first and TensorFlow Datasets second.

    Sources, in order:

    1. `data_dir` (or its `name/` subdirectory) when it holds the dataset's local files: the four IDX files
       for `"mnist"` and `"fashion_mnist"`, the CIFAR-10 python batches for `"cifar10"`, `ptb.train.txt`,
       `ptb.valid.txt`, `ptb.test.txt` for `"ptb"`.
    2. Local defaults: `$KERAS_SNGD_DATA/name/` in the same formats, then, for `"fashion_mnist"`, Debian's
       `/usr/share/datasets/fashion-mnist` (`apt-get install dataset-fashion-mnist`).
    3. TensorFlow Datasets (not for `"ptb"`), when it has the dataset prepared: `tfds.load(name,
       split=split, data_dir=data_dir, download=False, as_supervised=True, batch_size=-1)`.
    4. Only with `download=True` (not for `"ptb"`): `keras.datasets.<name>.load_data()`, which downloads the
       files once, with a progress bar, into `~/.keras/datasets/` and reads them from there afterwards
       (`keras_sngd.datasets.download.download_dataset`).

    Otherwise it raises `FileNotFoundError` saying exactly how to get the data (the Debian package, where
    to put the files, or how to download them), and, after a failed download, why it failed.

    Args:
        name: one of `"mnist"`, `"fashion_mnist"`, `"cifar10"`, `"ptb"`.
        split: `"train"` or `"test"`. Defaults to `"train"`. Ignored for `"ptb"`, which returns all splits.
        data_dir: a directory to look in first, also passed to TensorFlow Datasets. Defaults to `None`.
        download: whether to download the dataset with Keras's loader when no local copy exists. Defaults
            to `False`: nothing is fetched.

    Returns:
        For image datasets, `(images, labels)`: uint8 images, channels-last, `(n, 28, 28, 1)` for MNIST and
        Fashion-MNIST and `(n, 32, 32, 3)` for CIFAR-10, and int64 labels `(n,)`. For `"ptb"`, the
        `TextCorpus` of `load_text_corpus`.
    """
    if name not in KNOWN_DATASETS:
        raise ValueError(f"`name` must be one of {KNOWN_DATASETS}. Received: name={name!r}")
    if name != "ptb" and split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    searched = []
    for directory in _local_directories(name, data_dir):
        searched.append(directory)
        try:
            return _read_local(name, directory, split)
        except FileNotFoundError:
            continue
    loaded, tfds_reason = _read_tfds(name, split, data_dir)
    if loaded is not None:
        return loaded
    download_reason = None
    if download and name in DOWNLOADABLE_DATASETS:
        loaded, download_reason = _download(name, split)
        if loaded is not None:
            return loaded
    raise FileNotFoundError(
        _not_found_message(name, split, data_dir, searched, (tfds_reason, download_reason), download_reason is not None)
    )
