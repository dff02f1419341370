import gzip
import os

import numpy as np
import pytest

from keras_sngd.datasets import load_idx_directory
from keras_sngd.datasets import read_idx


def write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, suffix):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = os.path.join(tmp_path, "images" + suffix)
    write_idx(path, images)
    np.testing.assert_array_equal(read_idx(path), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(os.path.join(tmp_path, "floats"), floats, type_code=0x0D)
    np.testing.assert_array_equal(read_idx(os.path.join(tmp_path, "floats")), floats)


def test_directory_of_mixed_gzip_and_plain_files(tmp_path):
    write_idx(os.path.join(tmp_path, "t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28), np.uint8))
    write_idx(os.path.join(tmp_path, "t10k-labels-idx1-ubyte"), np.array([1, 2, 3], np.uint8))
    images, labels = load_idx_directory(str(tmp_path), "test")
    assert images.shape == (3, 28, 28) and labels.tolist() == [1, 2, 3]


def test_bad_files_and_missing_directory_raise(tmp_path):
    path = os.path.join(tmp_path, "bad")
    with open(path, "wb") as handle:
        handle.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)
    write_idx(path, np.zeros((2, 2), np.uint8))
    with open(path, "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(ValueError, match="data bytes"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_idx_directory(str(tmp_path), "train")
    with pytest.raises(ValueError, match="split"):
        load_idx_directory(str(tmp_path), "validation")


def test_real_fashion_mnist(fashion_mnist_directory):
    images, labels = load_idx_directory(fashion_mnist_directory, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10
