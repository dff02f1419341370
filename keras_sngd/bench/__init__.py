"""The main command: SNGD side by side with SGD, Adam, RAdam, Muon and NGD on a reference model.

    python -m keras_sngd.bench                      # MLP on Fashion-MNIST: SGD, Adam, Muon, SNGD, 5 epochs
    python -m keras_sngd.bench --model small_cnn --optimizers sgd,adam,muon,ngd,sngd --seeds 0,1,2
    python -m keras_sngd.bench --optimizers adam,muon,sngd --lr-grid default   # each tuned on its own grid
    python -m keras_sngd.bench --model lstm --dataset ptb --data-dir ~/ptb --epochs 10

Every model of `keras_sngd.models.REFERENCE_MODELS` is a `--model`, with its own default dataset. When the
dataset is not on this machine, MNIST, Fashion-MNIST and CIFAR-10 are downloaded once with Keras's loader
(progress bar; `--no-download` forbids it); offline, the command says what to install.

Per optimizer (one row of `keras_sngd.bench.optimizers.OPTIMIZERS`) it prints: the learning rate (the
default, `--lr`, or the winner of `--lr-grid` on the first seed, where a grid that diverges everywhere is
reported as such and not run further), time per epoch (median of the epochs after the first, which also
compiles), the final training loss (Keras's mean over the last epoch), test accuracy (perplexity for a
language model), and the wall-clock time (fit time, compilation included) until the seed-averaged epoch
loss first reached the best first-order baseline's final training loss (SGD, Adam, RAdam, Muon; NGD only
when none of them ran). One seed prints plain values; several print mean ± standard deviation, and a
seed that diverged is counted as such. It writes `results.json` (settings, grid searches, every run;
saved after every run, so that an interrupted command loses nothing), `results.csv` and `curves.png` to
`--output-dir`; `--summarize DIR` recomputes the table and plot of an earlier (or interrupted) run from its
`results.json`, without training.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_sngd.bench.cli import main  # noqa: E402
from keras_sngd.bench.cli import parse_arguments  # noqa: E402
from keras_sngd.bench.optimizers import OPTIMIZERS  # noqa: E402
from keras_sngd.bench.optimizers import OptimizerSpec  # noqa: E402
from keras_sngd.bench.report import markdown_table  # noqa: E402
from keras_sngd.bench.report import resummarize  # noqa: E402
from keras_sngd.bench.report import summarize  # noqa: E402

__all__ = ["OPTIMIZERS", "OptimizerSpec", "main", "markdown_table", "parse_arguments", "resummarize", "summarize"]
