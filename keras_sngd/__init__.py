"""keras-sngd: structured natural gradient descent (SNGD) for Keras 3 `model.fit`."""

from keras_sngd.local_fisher import LocalFisher
from keras_sngd.newton_schulz import newton_schulz

__version__ = "0.1.0"

__all__ = ["LocalFisher", "newton_schulz", "__version__"]
