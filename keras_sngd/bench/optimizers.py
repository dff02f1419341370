"""The main command's optimizers: one table row per optimizer, from label to `(model, optimizer)`.

Adding an optimizer to `python -m keras_sngd.bench` is adding one row to `OPTIMIZERS`: its label, its
default learning rate, its learning-rate grid (the same length as every other row's, so `--lr-grid
default` tunes every optimizer with the same budget), whether it is a first-order baseline (the time-to-
target column measures against the best of those), and a function that builds `(model, optimizer)` from
the plain reference model. The command derives its `--optimizers` choices, `--lr` names and table labels
from the table.
"""

from typing import Callable
from typing import NamedTuple

import keras


class OptimizerSpec(NamedTuple):
    """One row of the optimizer table.

    Fields:
        label: the name printed in the table and the plot.
        learning_rate: the default learning rate (`--lr NAME=RATE` overrides it).
        grid: the learning rates `--lr-grid default` tries, largest first; every row has as many.
        baseline: whether it is a first-order baseline, against whose best final loss the table's
            time-to-target column is measured.
        build: `build(plain, learning_rate, local_fisher_arguments)` returns `(model, optimizer)` for the plain
            reference model `plain` (built, with its initial weights), leaving `plain` unchanged.
    """

    label: str
    learning_rate: float
    grid: tuple
    baseline: bool
    build: Callable


def _copy(plain):
    model = keras.models.clone_model(plain)
    model.set_weights(plain.get_weights())
    return model


def _sgd(plain, learning_rate, local_fisher_arguments):
    return _copy(plain), keras.optimizers.SGD(learning_rate, momentum=0.9)


def _adam(plain, learning_rate, local_fisher_arguments):
    return _copy(plain), keras.optimizers.Adam(learning_rate)


def _radam(plain, learning_rate, local_fisher_arguments):
    from keras_sngd.optimizers import RAdam

    return _copy(plain), RAdam(learning_rate)


def _muon(plain, learning_rate, local_fisher_arguments):
    # Keras's defaults: the Muon step on 2-D+ kernels, AdamW on biases, embeddings and other variables.
    return _copy(plain), keras.optimizers.Muon(learning_rate)


def _ngd(plain, learning_rate, local_fisher_arguments):
    from keras_sngd.fisher_statistics import FisherStatistics
    from keras_sngd.optimizers import NGD
    from keras_sngd.reconstruct import reconstruct

    # `--local-fisher` applies to SNGD and NGD alike; the statistics-only layer has no trust region.
    arguments = {key: value for key, value in (local_fisher_arguments or {}).items() if key != "max_step"}
    model = reconstruct(plain, local_fisher_arguments=arguments, layer_class=FisherStatistics)
    return model, NGD(learning_rate).attach(model)


def _sngd(plain, learning_rate, local_fisher_arguments):
    from keras_sngd.reconstruct import reconstruct

    return reconstruct(plain, local_fisher_arguments=local_fisher_arguments), keras.optimizers.SGD(learning_rate)


def _kfac(plain, learning_rate, local_fisher_arguments):
    from keras_sngd.optimizers import build_kfac_training

    return build_kfac_training(plain, learning_rate)


# SGD with momentum 0.9 and the adaptive methods at their usual rates; SNGD and NGD take plain SGD steps
# (no momentum) at the rate benchmarks/defaults_sweep.py found for the MLP. Muon's default is the better
# of 3e-3 and 1e-3 on the MLP (README "Two commands" has the command that measured it).
OPTIMIZERS = {
    "sgd": OptimizerSpec("SGD (momentum 0.9)", 0.01, (0.1, 0.03, 0.01, 0.003), True, _sgd),
    "adam": OptimizerSpec("Adam", 0.001, (0.01, 0.003, 0.001, 0.0003), True, _adam),
    "radam": OptimizerSpec("RAdam", 0.001, (0.01, 0.003, 0.001, 0.0003), True, _radam),
    "muon": OptimizerSpec("Muon", 0.003, (0.01, 0.003, 0.001, 0.0003), True, _muon),
    "ngd": OptimizerSpec("NGD", 0.1, (0.3, 0.1, 0.03, 0.01), False, _ngd),
    "sngd": OptimizerSpec("SNGD", 0.1, (0.3, 0.1, 0.03, 0.01), False, _sngd),
    # K-FAC (momentum 0.9, KL clip 1e-4): with the KL clip active the step length is set by the clip, so
    # its learning rate matters little (benchmarks/kfac_results.md).
    "kfac": OptimizerSpec("K-FAC", 0.1, (0.3, 0.1, 0.03, 0.01), False, _kfac),
}
