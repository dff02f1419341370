"""Fetching an image dataset from the internet with Keras's own dataset loaders.

`load_dataset(..., download=True)` calls `download_dataset` only after every local source failed. The
loaders (`keras.datasets.fashion_mnist.load_data()`, `keras.datasets.mnist.load_data()`,
`keras.datasets.cifar10.load_data()`) download once, with a progress bar, into `~/.keras/datasets/`
(`$KERAS_HOME/datasets/` when set), and read that cache on later calls without the network. They need no
package beyond Keras.
"""

import keras
import numpy as np

from keras_sngd.validation import check_choice

DOWNLOADABLE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")


def download_dataset(name, split="train"):
    """One split of `name` from `keras.datasets.<name>.load_data()`, downloading on the first call.

    The loader fetches both splits at once and caches the files, so asking for the other split later
    reads the cache. Network failures propagate as the loader raises them (Keras raises a plain
    `Exception` naming the URL for a failed fetch); `load_dataset` turns them into a message that says
    how to get the data offline.

    Args:
        name: `"mnist"`, `"fashion_mnist"` or `"cifar10"`.
        split: `"train"` or `"test"`. Defaults to `"train"`.

    Returns:
        `(images, labels)`: uint8 images, channels-last, `(n, 28, 28, 1)` for MNIST and Fashion-MNIST and
        `(n, 32, 32, 3)` for CIFAR-10, and int64 labels `(n,)`, the format of `load_dataset`.

    Example:

    ```python
    images, labels = download_dataset("fashion_mnist", "test")   # images.shape == (10000, 28, 28, 1)
    ```
    """
    check_choice("name", name, DOWNLOADABLE_DATASETS)
    check_choice("split", split, SPLITS)
    # Looked up at call time, so tests can stand in for the network by patching `load_data`.
    loader = getattr(keras.datasets, name).load_data
    train, test = loader()
    images, labels = train if split == "train" else test
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images, np.asarray(labels).reshape(-1).astype(np.int64)
