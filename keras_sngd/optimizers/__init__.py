"""Optimizers: RAdam (a baseline Keras lacks) and NGD (the paper's natural gradient baseline)."""

from keras_sngd.optimizers.ngd import NGD
from keras_sngd.optimizers.radam import RAdam

__all__ = ["NGD", "RAdam"]
