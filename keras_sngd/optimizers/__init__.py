"""Optimizers: RAdam (a baseline Keras lacks), NGD and K-FAC (the paper's natural gradient baselines)."""

from keras_sngd.optimizers.kfac import KFAC
from keras_sngd.optimizers.kfac import build_kfac_training
from keras_sngd.optimizers.kfac import check_kfac_model
from keras_sngd.optimizers.kfac_layers import prepare as prepare_kfac
from keras_sngd.optimizers.ngd import NGD
from keras_sngd.optimizers.radam import RAdam

__all__ = ["KFAC", "NGD", "RAdam", "build_kfac_training", "check_kfac_model", "prepare_kfac"]
