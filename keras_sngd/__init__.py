"""keras-sngd: structured natural gradient descent (SNGD) for Keras 3 `model.fit`."""

from keras_sngd import callbacks
from keras_sngd import optimizers  # keras_sngd.optimizers.NGD, KFAC, RAdam after `import keras_sngd`
from keras_sngd.callbacks import FunctionPreservingRefresh
from keras_sngd.fisher_statistics import FisherStatistics
from keras_sngd.fold import fold
from keras_sngd.inner_whitening import InnerWhitening
from keras_sngd.local_fisher import LocalFisher
from keras_sngd.newton_schulz import newton_schulz
from keras_sngd.reconstruct import ReconstructionReport
from keras_sngd.recurrent_whitening import RecurrentWhitening
from keras_sngd.reconstruct import reconstruct
from keras_sngd.step_bound import StepBound

__version__ = "0.1.0"

__all__ = [
    "FisherStatistics",
    "FunctionPreservingRefresh",
    "InnerWhitening",
    "LocalFisher",
    "ReconstructionReport",
    "RecurrentWhitening",
    "StepBound",
    "callbacks",
    "fold",
    "newton_schulz",
    "optimizers",
    "reconstruct",
    "__version__",
]
