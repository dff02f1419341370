"""One training run of the main command, and the learning-rate grid search built on it."""

import math
import time
from typing import NamedTuple

import keras

from keras_sngd.bench.data import build_plain_model
from keras_sngd.bench.data import perplexity
from keras_sngd.bench.optimizers import OPTIMIZERS


class Settings(NamedTuple):
    """What every run shares: the model and how it trains (a subset of the command's flags)."""

    model: str
    epochs: int
    batch_size: int
    l2: float = 0.0
    lstm_layers: int = 2
    local_fisher: dict = None
    verbose: int = 1


class GridSearch(NamedTuple):
    """The learning rates tried for one optimizer and what each reached.

    `best` is the learning rate with the lowest finite final training loss, or None when every value
    diverged (a non-finite loss); `runs` are the grid's training runs, kept as evidence.
    """

    optimizer: str
    learning_rates: tuple
    final_losses: tuple
    best: float
    runs: list

    @property
    def all_diverged(self):
        return self.best is None

    def as_dict(self):
        return {"optimizer": self.optimizer, "learning_rates": list(self.learning_rates),
                "final_losses": list(self.final_losses), "best": self.best, "all_diverged": self.all_diverged}


class EpochClock(keras.callbacks.Callback):
    """`epoch_ends`: the seconds since `fit` began at the end of each epoch (compilation included)."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epoch_ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter() - self.start)


def run_one(name, learning_rate, seed, data, settings):
    """Train optimizer `name` with one seed; a dict of per-epoch losses and end times, and the test metric.

    It starts from a cleared Keras session with the earlier runs' models collected, so that no run carries
    the state of the ones before it (`keras.backend.clear_session`). Left to the garbage collector, earlier
    models made the first batch of some epochs (the data iterator's creation) take up to 2.7 s in a later
    SNGD run (paper MLP, full Fashion-MNIST, the fourth to seventh model of a process). With the session
    cleared such slow epoch starts still occur, more rarely and for every optimizer alike (the shared
    machine), which is why the table reports medians of the epochs after the first.
    """
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    plain = build_plain_model(settings.model, data, l2=settings.l2, lstm_layers=settings.lstm_layers)
    model, optimizer = OPTIMIZERS[name].build(plain, learning_rate, settings.local_fisher)
    language_model = data.task.kind == "language_model"
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[] if language_model else ["accuracy"],
    )
    clock = EpochClock()
    history = model.fit(*data.train, batch_size=settings.batch_size, epochs=settings.epochs, callbacks=[clock],
                        verbose=settings.verbose)
    test = model.evaluate(*data.test, batch_size=max(settings.batch_size, 256), verbose=0, return_dict=True)
    result = {
        "optimizer": name,
        "learning_rate": learning_rate,
        "seed": seed,
        "losses": [float(loss) for loss in history.history["loss"]],
        "epoch_ends": clock.epoch_ends,
        "test_loss": float(test["loss"]),
    }
    if language_model:
        result["test_perplexity"] = perplexity(test["loss"])
    else:
        result["test_accuracy"] = float(test["accuracy"])
    return result


def search_learning_rate(name, grid, seed, data, settings):
    """Train `name` at every learning rate of `grid` with `seed`; the one with the lowest final loss wins.

    A run whose final training loss is not finite has diverged and cannot win; when all have, `best` is
    None and the caller says so instead of picking a rate.
    """
    runs, losses = [], []
    for learning_rate in grid:
        run = run_one(name, learning_rate, seed, data, settings)
        loss = run["losses"][-1]
        runs.append(run)
        losses.append(loss)
        print(f"  lr grid: {name} lr={learning_rate:g}: final training loss "
              f"{loss:.4f}" if math.isfinite(loss) else f"  lr grid: {name} lr={learning_rate:g}: diverged ({loss})",
              flush=True)
    finite = [(loss, learning_rate) for loss, learning_rate in zip(losses, grid) if math.isfinite(loss)]
    best = min(finite)[1] if finite else None
    return GridSearch(name, tuple(grid), tuple(losses), best, runs)
