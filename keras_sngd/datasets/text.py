"""Word-level text corpora in the Penn Treebank layout (`ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt`)."""

import collections
import dataclasses
import os

import numpy as np

PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
END_OF_SENTENCE = "<eos>"
UNKNOWN = "<unk>"


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A tokenised corpus: int32 word ids of each split and the vocabulary they index.

    Attributes:
        train: int32 ids of the training file, `(num_tokens,)`.
        valid: int32 ids of the validation file.
        test: int32 ids of the test file.
        vocabulary: the words; `vocabulary[i]` is the word of id `i`.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocabulary: list

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    @property
    def word_to_id(self):
        return {word: index for index, word in enumerate(self.vocabulary)}


def _read_words(path):
    """The words of a file, each line split on whitespace and ended with `<eos>`."""
    words = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            words.extend(line.split())
            words.append(END_OF_SENTENCE)
    return words


def load_text_corpus(directory, files=PTB_FILES):
    """A `TextCorpus` of word ids from three word-level text files, in the Penn Treebank layout.

    Each line is split on whitespace and ended with an `"<eos>"` token. The vocabulary is built from the
    training file, sorted by descending frequency, ties broken by the word; it always holds `"<unk>"` (PTB's
    files already use it; otherwise it is added last), and words of the validation and test files that the
    training file lacks map to it.

    The Penn Treebank files are `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt` of the `data/` directory
    in Mikolov's `simple-examples` archive.

    Args:
        directory: the directory holding the files.
        files: the `(train, valid, test)` file names inside `directory`. Defaults to PTB's.
    """
    files = tuple(files)
    if len(files) != 3:
        raise ValueError(f"`files` must name 3 files: (train, valid, test). Received: files={files!r}")
    paths = [os.path.join(directory, name) for name in files]
    missing = [name for name, path in zip(files, paths) if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"No {', '.join(missing)} in {directory!r}. For the Penn Treebank: put ptb.train.txt, ptb.valid.txt "
            "and ptb.test.txt (the data/ directory of Mikolov's simple-examples archive, simple-examples.tgz) "
            "in one directory and pass it; or pass `files` naming your own (train, valid, test) text files."
        )
    train_words, valid_words, test_words = (_read_words(path) for path in paths)
    counts = collections.Counter(train_words)
    vocabulary = sorted(counts, key=lambda word: (-counts[word], word))
    if UNKNOWN not in counts:
        vocabulary.append(UNKNOWN)
    word_to_id = {word: index for index, word in enumerate(vocabulary)}
    unknown = word_to_id[UNKNOWN]

    def encode(words):
        return np.array([word_to_id.get(word, unknown) for word in words], dtype=np.int32)

    return TextCorpus(
        train=encode(train_words), valid=encode(valid_words), test=encode(test_words), vocabulary=vocabulary
    )


def language_model_windows(ids, sequence_length):
    """`(inputs, targets)` of next-word prediction: non-overlapping windows of `ids`, targets shifted by one.

    Window `i` is `inputs[i] = ids[i * L : (i + 1) * L]` and `targets[i] = ids[i * L + 1 : (i + 1) * L + 1]`
    for `L = sequence_length`; there are `(len(ids) - 1) // L` windows, the remainder is dropped (none when
    `ids` is too short). Both are int32 of shape `(num_windows, sequence_length)`.

    Args:
        ids: a 1-D array of word ids, e.g. `load_text_corpus(...).train`.
        sequence_length: a positive int, the window length.
    """
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive int. Received: sequence_length={sequence_length!r}")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"`ids` must be 1-D. Received: ids with shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must hold integers. Received: ids of dtype {ids.dtype}")
    num_windows = max(len(ids) - 1, 0) // sequence_length
    used = num_windows * sequence_length
    inputs = ids[:used].reshape(num_windows, sequence_length).astype(np.int32)
    targets = ids[1 : used + 1].reshape(num_windows, sequence_length).astype(np.int32)
    return inputs, targets
