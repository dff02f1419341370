"""The small SNGD model and data shared by the distributed checks (no backend-specific import)."""

import keras
import numpy as np

from keras_sngd import LocalFisher

STATE = ("second_moment", "mean", "statistics_weight", "inverse_root", "step", "refresh_count")


def build(update_every):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6,)),
        # The batch-leverage scale on: every replica must use the global batch's rows (`batch_rows`, among
        # the weights compared).
        # Adaptive statistics (a period of statistics, like `statistics_every="auto"` before a wide Dense
        # input): under MirroredStrategy their all-reduce cannot sit in a conditional (it raised before
        # every batch was taken in there); with tolerance 0 every check refreshes and the period stays 1.
        LocalFisher(refresh_tolerance=0, update_every=update_every, leverage_scaling=True, adaptive_statistics=True),
        keras.layers.Dense(8, activation="relu"),
        LocalFisher(refresh_tolerance=0, update_every=update_every, leverage_scaling=True),
        keras.layers.Dense(2),
    ])


def data():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((128, 6)).astype("float32")
    # The halves of every global batch of 16 differ: replica 0 sees shifted, scaled rows.
    inputs[np.arange(128) % 16 < 8] = 3.0 * inputs[np.arange(128) % 16 < 8] + 2.0
    targets = inputs @ rng.standard_normal((6, 2)).astype("float32")
    return inputs, targets
