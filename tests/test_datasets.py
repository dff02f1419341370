import gzip
import os
import pickle

import numpy as np
import pytest

from keras_sngd.datasets import language_model_windows
from keras_sngd.datasets import load_cifar10_directory
from keras_sngd.datasets import load_dataset
from keras_sngd.datasets import load_text_corpus

CHANNEL_VALUES = (10, 20, 30)  # red, green, blue of every synthetic CIFAR pixel, offset by the image index


def write_cifar_batch(path, labels, str_keys=False):
    """A CIFAR-10 python batch whose image `i` has the value `CHANNEL_VALUES[c] + i` in channel `c`."""
    images = np.stack(
        [np.stack([np.full((32, 32), value + index, np.uint8) for value in CHANNEL_VALUES]) for index in range(len(labels))]
    )
    data = images.reshape(len(labels), 3072)  # channel-major rows, as CIFAR-10 stores them
    batch = {"data": data, "labels": list(labels)} if str_keys else {b"data": data, b"labels": list(labels)}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)


def write_cifar_directory(directory):
    os.makedirs(directory, exist_ok=True)
    for index in range(1, 6):
        write_cifar_batch(os.path.join(directory, f"data_batch_{index}"), [index, (index + 1) % 10])
    write_cifar_batch(os.path.join(directory, "test_batch"), [7, 8, 9], str_keys=True)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_idx_directory(directory, num_test=3):
    os.makedirs(directory, exist_ok=True)
    for prefix, count in (("train", 4), ("t10k", num_test)):
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), np.full((count, 28, 28), 5, np.uint8))
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(count, dtype=np.uint8))


def write_text(directory, train, valid, test, names=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")):
    os.makedirs(directory, exist_ok=True)
    for name, text in zip(names, (train, valid, test)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(text)


PTB_TRAIN = " the cat sat \n the dog <unk> sat \n a cat \n"
PTB_VALID = " the bird sat \n"
PTB_TEST = " a dog \n"


# CIFAR-10 python batches.


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_channels_last_and_labels(tmp_path, nested):
    write_cifar_directory(os.path.join(tmp_path, "cifar-10-batches-py") if nested else str(tmp_path))
    images, labels = load_cifar10_directory(str(tmp_path), "train")
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    np.testing.assert_array_equal(images[0, 5, 7], CHANNEL_VALUES)
    np.testing.assert_array_equal(images[1, 31, 0], np.add(CHANNEL_VALUES, 1))
    test_images, test_labels = load_cifar10_directory(str(tmp_path), "test")
    assert test_images.shape == (3, 32, 32, 3) and test_labels.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(test_images[2, 0, 31], np.add(CHANNEL_VALUES, 2))


def test_cifar10_pixel_order_within_a_channel(tmp_path):
    data = np.zeros((1, 3, 32, 32), np.uint8)
    data[0, 1, 2, 3] = 200  # green, row 2, column 3
    with open(os.path.join(tmp_path, "test_batch"), "wb") as handle:
        pickle.dump({b"data": data.reshape(1, 3072), b"labels": [0]}, handle)
    images, _ = load_cifar10_directory(str(tmp_path), "test")
    assert images[0, 2, 3].tolist() == [0, 200, 0] and int(images.sum()) == 200


def test_cifar10_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10_directory(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split"):
        load_cifar10_directory(str(tmp_path), "valid")
    path = os.path.join(tmp_path, "test_batch")
    for payload in (b"not a pickle", pickle.dumps([1, 2]), pickle.dumps({b"labels": [0]})):
        with open(path, "wb") as handle:
            handle.write(payload)
        with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
            load_cifar10_directory(str(tmp_path), "test")
    for batch, match in [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images"),
        ({b"data": np.zeros((1, 1024), np.uint8), b"labels": [0]}, "shape"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "labels must lie"),
    ]:
        with open(path, "wb") as handle:
            pickle.dump(batch, handle)
        with pytest.raises(ValueError, match=match):
            load_cifar10_directory(str(tmp_path), "test")


# Word-level text.


def test_text_corpus_vocabulary_and_unknown_words(tmp_path):
    write_text(tmp_path, PTB_TRAIN, PTB_VALID, PTB_TEST)
    corpus = load_text_corpus(str(tmp_path))
    # Counts: <eos> 3, cat 2, sat 2, the 2, <unk> 1, a 1, dog 1; ties by word.
    assert corpus.vocabulary == ["<eos>", "cat", "sat", "the", "<unk>", "a", "dog"]
    words = lambda ids: [corpus.vocabulary[i] for i in ids]  # noqa: E731
    assert words(corpus.train) == "the cat sat <eos> the dog <unk> sat <eos> a cat <eos>".split()
    assert words(corpus.valid) == ["the", "<unk>", "sat", "<eos>"]  # "bird" is not in training
    assert words(corpus.test) == ["a", "dog", "<eos>"]
    assert all(ids.dtype == np.int32 for ids in (corpus.train, corpus.valid, corpus.test))
    assert corpus.vocabulary_size == 7 and corpus.word_to_id["the"] == 3


def test_text_corpus_adds_unknown_when_absent(tmp_path):
    write_text(tmp_path, "b a\nb\n", "c\n", "a b\n", names=("tr.txt", "va.txt", "te.txt"))
    corpus = load_text_corpus(str(tmp_path), files=("tr.txt", "va.txt", "te.txt"))
    assert corpus.vocabulary == ["<eos>", "b", "a", "<unk>"]
    assert corpus.valid.tolist() == [3, 0]
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        load_text_corpus(str(tmp_path))
    with pytest.raises(ValueError, match="files"):
        load_text_corpus(str(tmp_path), files=("tr.txt", "va.txt"))


def test_language_model_windows():
    inputs, targets = language_model_windows(np.arange(11), 3)
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    assert inputs.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert targets.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    inputs, targets = language_model_windows(np.arange(10), 3)  # 9 would need target 10: dropped
    assert inputs.shape == (3, 3) and targets[-1].tolist() == [7, 8, 9]
    assert language_model_windows(np.arange(3), 3)[0].shape == (0, 3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="sequence_length"):
            language_model_windows(np.arange(10), bad)
    with pytest.raises(ValueError, match="ids"):
        language_model_windows(np.zeros((2, 5), np.int32), 2)


# The registry.


@pytest.fixture
def no_data_environment(monkeypatch):
    monkeypatch.delenv("KERAS_SNGD_DATA", raising=False)


def test_fashion_mnist_from_the_debian_package(fashion_mnist_directory, no_data_environment):
    images, labels = load_dataset("fashion_mnist", "test")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images.max() == 255


def test_data_dir_formats(tmp_path, no_data_environment):
    write_cifar_directory(os.path.join(tmp_path, "c", "cifar-10-batches-py"))
    images, labels = load_dataset("cifar10", "test", data_dir=os.path.join(tmp_path, "c"))
    assert images.shape == (3, 32, 32, 3) and labels.dtype == np.int64
    write_idx_directory(os.path.join(tmp_path, "m"))
    images, labels = load_dataset("mnist", "test", data_dir=os.path.join(tmp_path, "m"))
    assert images.shape == (3, 28, 28, 1) and labels.tolist() == [0, 1, 2] and labels.dtype == np.int64
    write_text(os.path.join(tmp_path, "p", "ptb"), PTB_TRAIN, PTB_VALID, PTB_TEST)  # data_dir/name/ also works
    corpus = load_dataset("ptb", data_dir=os.path.join(tmp_path, "p"))
    assert corpus.vocabulary[0] == "<eos>" and len(corpus.test) == 3


def test_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_SNGD_DATA", str(tmp_path))
    write_cifar_directory(os.path.join(tmp_path, "cifar10"))
    assert load_dataset("cifar10", "train")[0].shape == (10, 32, 32, 3)
    write_idx_directory(os.path.join(tmp_path, "mnist"))
    assert load_dataset("mnist", "train")[0].shape == (4, 28, 28, 1)
    # Ahead of Debian's Fashion-MNIST directory.
    write_idx_directory(os.path.join(tmp_path, "fashion_mnist"), num_test=2)
    assert load_dataset("fashion_mnist", "test")[1].tolist() == [0, 1]
    write_text(os.path.join(tmp_path, "ptb"), PTB_TRAIN, PTB_VALID, PTB_TEST)
    assert load_dataset("ptb").valid.tolist() == [3, 4, 2, 0]


def test_missing_cifar10_fails_without_downloading(tmp_path, monkeypatch, no_data_environment):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    real_load = tfds.load

    def spy_load(name, **kwargs):
        calls.append((name, kwargs))
        assert kwargs["download"] is False
        return real_load(name, **kwargs)

    monkeypatch.setattr(tfds, "load", spy_load)
    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("cifar10", data_dir=str(tmp_path))
    message = str(raised.value)
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message
    assert "tfds build cifar10" in message and "download=True" in message
    assert calls == [
        ("cifar10", dict(split="train", data_dir=str(tmp_path), download=False, as_supervised=True, batch_size=-1))
    ]
    assert os.listdir(tmp_path) == []  # nothing was downloaded or prepared


def test_missing_fashion_mnist_message_names_the_debian_package(tmp_path, monkeypatch, no_data_environment):
    monkeypatch.setattr("keras_sngd.datasets.registry.FASHION_MNIST_DIRECTORY", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as raised:
        load_dataset("fashion_mnist", "test", data_dir=str(tmp_path))
    assert "tfds build fashion_mnist" in str(raised.value)


def test_missing_ptb_message(tmp_path, no_data_environment):
    with pytest.raises(FileNotFoundError, match="ptb.train.txt") as raised:
        load_dataset("ptb", data_dir=str(tmp_path))
    assert "no Penn Treebank" in str(raised.value)


def test_bad_name_and_split(tmp_path):
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", split="validation", data_dir=str(tmp_path))


# Downloading, with the network replaced by a stand-in for Keras's loader (tests never download).


def fake_loader(calls, train_count=5, test_count=3, shape=(28, 28), label_shape=()):
    def load_data():
        calls.append("load_data")
        split = lambda count: (  # noqa: E731
            np.full((count,) + shape, 7, np.uint8), np.arange(count, dtype=np.uint8).reshape((count,) + label_shape)
        )
        return split(train_count), split(test_count)

    return load_data


@pytest.fixture
def nothing_local(tmp_path, monkeypatch, no_data_environment):
    monkeypatch.setattr("keras_sngd.datasets.registry.FASHION_MNIST_DIRECTORY", str(tmp_path / "absent"))
    monkeypatch.setattr("keras_sngd.datasets.registry._read_tfds", lambda *args: (None, "no TFDS copy (test)."))
    return tmp_path


def test_download_fetches_with_the_keras_loader_only_when_asked(nothing_local, monkeypatch, capsys):
    import keras

    calls = []
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", fake_loader(calls))
    with pytest.raises(FileNotFoundError, match="nothing was downloaded"):
        load_dataset("fashion_mnist", "test", data_dir=str(nothing_local))
    assert calls == []
    images, labels = load_dataset("fashion_mnist", "test", data_dir=str(nothing_local), download=True)
    assert calls == ["load_data"]
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64
    assert "keras.datasets.fashion_mnist.load_data()" in capsys.readouterr().err
    # CIFAR-10's loader gives (n, 1) labels; the registry's format is (n,).
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_loader(calls, shape=(32, 32, 3), label_shape=(1,)))
    images, labels = load_dataset("cifar10", "train", data_dir=str(nothing_local), download=True)
    assert images.shape == (5, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3, 4]


def test_offline_download_says_what_to_install(nothing_local, monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://example.invalid/train-labels-idx1-ubyte.gz: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("fashion_mnist", "train", data_dir=str(nothing_local), download=True)
    message = str(raised.value)
    assert "downloading it failed" in message and "Temporary failure in name resolution" in message
    assert "apt-get install dataset-fashion-mnist" in message and "train-images-idx3-ubyte" in message
    assert "KERAS_SNGD_DATA" in message


def test_ptb_is_never_downloaded(tmp_path, no_data_environment, monkeypatch):
    monkeypatch.setattr("keras_sngd.datasets.registry.download_dataset", lambda *args: pytest.fail("downloaded"))
    with pytest.raises(FileNotFoundError, match="simple-examples"):
        load_dataset("ptb", data_dir=str(tmp_path), download=True)


def test_download_dataset_checks_its_arguments():
    from keras_sngd.datasets import download_dataset

    with pytest.raises(ValueError, match="`name` must be one of 'mnist', 'fashion_mnist', 'cifar10'"):
        download_dataset("ptb")
    with pytest.raises(ValueError, match="`split`"):
        download_dataset("mnist", "validation")
