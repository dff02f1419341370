"""Faults: a run stopped mid-epoch and resumed with `keras.callbacks.BackupAndRestore` ends where an
uninterrupted run ends, LocalFisher state (statistics, `U`, counters) and optimizer state included.

Keras's `BackupAndRestore` restores the epoch, not the batch: resumed, `fit` starts the interrupted epoch
from its first batch. So only `save_freq="epoch"` (its default) resumes exactly: the interrupted epoch is
redone from the backup at its start. With an integer `save_freq` the backup holds weights from the middle
of the epoch, and the batches before it are trained on twice.
"""

import keras
import numpy as np
import pytest

from keras_sngd import LocalFisher


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def model_and_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        LocalFisher(refresh_tolerance=0, update_every=3),
        keras.layers.Dense(8, activation="relu"),
        LocalFisher(refresh_tolerance=0, update_every=3, center=True),
        keras.layers.Dense(2),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((64, 6)) * rng.uniform(0.2, 3.0, 6) + 0.5).astype("float32")
    targets = np.tanh(inputs @ rng.standard_normal((6, 2))).astype("float32")
    return model, inputs, targets


def fit(model, inputs, targets, callbacks):
    # shuffle=False: the order of batches must not depend on a random state the backup does not hold.
    return model.fit(inputs, targets, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)


def state(model):
    return [np.asarray(v) for v in model.weights] + [np.asarray(v) for v in model.optimizer.variables]


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    reference, inputs, targets = model_and_data()
    fit(reference, inputs, targets, [])

    interrupted, _, _ = model_and_data()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        # Stopped in the middle of the second epoch (8 steps per epoch, refreshes every 3).
        fit(interrupted, inputs, targets, [backup, Interrupt(epoch=1, batch=4)])
    fisher = interrupted.layers[0]
    assert int(fisher.step.numpy()) == 13 and int(fisher.refresh_count.numpy()) == 4

    # A new process would build the same model again; the backup replaces its state.
    resumed, _, _ = model_and_data()
    history = fit(resumed, inputs, targets, [keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == 2  # epochs 1 and 2 only

    assert int(resumed.layers[0].step.numpy()) == 24 and int(resumed.layers[0].refresh_count.numpy()) == 8
    names = [v.path for v in resumed.weights] + [v.path for v in resumed.optimizer.variables]
    for name, expected, actual in zip(names, state(reference), state(resumed)):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7, err_msg=name)
