"""Reading CIFAR-10's "python version" batches (`data_batch_1` .. `data_batch_5`, `test_batch`)."""

import os
import pickle

import numpy as np

# The official `cifar-10-python.tar.gz` extracts to this directory.
CIFAR10_BATCHES_DIRECTORY = "cifar-10-batches-py"

_SPLIT_FILES = {
    "train": tuple(f"data_batch_{index}" for index in range(1, 6)),
    "test": ("test_batch",),
}

_IMAGE_SHAPE = (3, 32, 32)  # channel-major, as stored
_PIXELS = int(np.prod(_IMAGE_SHAPE))
_NUM_CLASSES = 10


def _read_batch(path):
    """`(images, labels)` of one pickled batch: uint8 `(n, 32, 32, 3)` and int64 `(n,)`.

    The batches are Python-2 pickles of dicts with the keys `b"data"` (a uint8 `(n, 3072)` array, each row
    the 1024 red, then the 1024 green, then the 1024 blue values of a 32x32 image, row-major) and
    `b"labels"` (n ints in `[0, 10)`). Like any pickle, a batch can run code when read: only read files from
    a source you trust.
    """
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as error:
        raise ValueError(f"{path!r} is not a CIFAR-10 python batch (unpickling failed: {error!r}).") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path!r} is not a CIFAR-10 python batch: it holds a {type(batch).__name__}, not a dict.")
    arrays = {}
    for key in ("data", "labels"):
        # The official batches have bytes keys; accept str keys from batches re-pickled under Python 3.
        for candidate in (key.encode(), key):
            if candidate in batch:
                arrays[key] = batch[candidate]
                break
        else:
            raise ValueError(
                f"{path!r} is not a CIFAR-10 python batch: no {key.encode()!r} key. Keys: {sorted(map(repr, batch))}"
            )
    data = np.asarray(arrays["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise ValueError(
            f"{path!r}: b'data' must be a uint8 array of shape (n, {_PIXELS}). "
            f"Received: dtype={data.dtype}, shape={data.shape}"
        )
    try:
        labels = np.asarray(arrays["labels"], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r}: b'labels' must be a sequence of ints ({error}).") from error
    if labels.shape != (len(data),):
        raise ValueError(f"{path!r}: {len(data)} images but b'labels' has shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise ValueError(
            f"{path!r}: labels must lie in [0, {_NUM_CLASSES}). Received: min={labels.min()}, max={labels.max()}"
        )
    images = data.reshape((len(data),) + _IMAGE_SHAPE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10_directory(directory, split="train"):
    """`(images, labels)` of one CIFAR-10 split from its python batches.

    The batches are those of the official `cifar-10-python.tar.gz`, extracted: `data_batch_1` ..
    `data_batch_5` (the 50000 training images) and `test_batch` (the 10000 test images). Images come back
    channels-last, uint8 of shape `(n, 32, 32, 3)`; labels int64 of shape `(n,)`.

    Args:
        directory: the directory holding the batches, or the one holding the extracted
            `cifar-10-batches-py/` directory.
        split: `"train"` or `"test"`. Defaults to `"train"`.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"`split` must be one of {tuple(_SPLIT_FILES)}. Received: split={split!r}")
    names = _SPLIT_FILES[split]
    candidates = [directory, os.path.join(directory, CIFAR10_BATCHES_DIRECTORY)]
    for candidate in candidates:
        if all(os.path.isfile(os.path.join(candidate, name)) for name in names):
            break
    else:
        missing = [name for name in names if not os.path.isfile(os.path.join(directory, name))]
        raise FileNotFoundError(
            f"No CIFAR-10 python batches for split {split!r} in {directory!r} or in its "
            f"{CIFAR10_BATCHES_DIRECTORY}/ subdirectory (missing: {', '.join(missing)}). They come from the "
            f"official CIFAR-10 'python version' archive, cifar-10-python.tar.gz: extract it (`tar xzf "
            f"cifar-10-python.tar.gz`) and pass the directory holding {CIFAR10_BATCHES_DIRECTORY}/ or the "
            "batches themselves (data_batch_1 .. data_batch_5, test_batch)."
        )
    batches = [_read_batch(os.path.join(candidate, name)) for name in names]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels
