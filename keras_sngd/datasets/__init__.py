"""Data loading for tests, examples and benchmarks (no downloads)."""

from keras_sngd.datasets.idx import load_idx_directory
from keras_sngd.datasets.idx import read_idx

__all__ = ["load_idx_directory", "read_idx"]
