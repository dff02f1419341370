"""Reading MNIST-format IDX files (MNIST, Fashion-MNIST), plain or gzipped."""

import gzip
import os

import numpy as np

# IDX type codes: the third byte of the magic number.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Debian's `dataset-fashion-mnist` package installs the real Fashion-MNIST files here.
FASHION_MNIST_DIRECTORY = "/usr/share/datasets/fashion-mnist"

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path):
    """Read one IDX file (`.gz` or not) into a numpy array of its stored dtype and shape.

    The format: 2 zero bytes, a type code, the number of dimensions `n`, then `n` big-endian uint32 sizes,
    then the data, row-major.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(data[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path!r} holds {len(data) - header} data bytes, but its header {shape} needs {expected}."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_directory(directory=FASHION_MNIST_DIRECTORY, split="train"):
    """`(images, labels)` of one split from an MNIST-format directory, as uint8 arrays.

    The directory holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    `t10k-labels-idx1-ubyte`, each optionally gzipped, as MNIST and Fashion-MNIST ship them. Images have
    shape `(n, 28, 28)`, labels `(n,)`.

    Args:
        directory: the directory. Defaults to Debian's Fashion-MNIST
            (`apt-get install dataset-fashion-mnist`).
        split: `"train"` or `"test"`. Defaults to `"train"`.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"`split` must be one of {tuple(_SPLIT_FILES)}. Received: split={split!r}")
    arrays = []
    for stem in _SPLIT_FILES[split]:
        candidates = [os.path.join(directory, stem + suffix) for suffix in ("", ".gz")]
        found = [path for path in candidates if os.path.exists(path)]
        if not found:
            raise FileNotFoundError(
                f"No {stem}[.gz] in {directory!r}. For Fashion-MNIST on Debian or Ubuntu: "
                "`apt-get install dataset-fashion-mnist` (installs to "
                f"{FASHION_MNIST_DIRECTORY}); or pass a directory holding the four MNIST-format IDX files."
            )
        arrays.append(read_idx(found[0]))
    images, labels = arrays
    if len(images) != len(labels):
        raise ValueError(f"{directory!r}: {len(images)} images but {len(labels)} labels in split {split!r}.")
    return images, labels
