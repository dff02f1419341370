"""Per-epoch view of a main-command run: seed-averaged training loss and fit time at each epoch end.

    python benchmarks/per_epoch.py DIR [DIR ...]

Reads `DIR/results.json` written by `python -m keras_sngd.bench` and prints one Markdown table per
directory: for each optimizer (at its chosen learning rate) the mean training loss after every epoch,
then the mean fit time (compilation included) at each epoch end, so that losses can be compared per epoch
and per second.
"""

import json
import math
import os
import sys

import numpy as np

from keras_sngd.bench.report import _label


def table(directory):
    with open(os.path.join(directory, "results.json")) as handle:
        saved = json.load(handle)
    runs = saved["runs"]
    epochs = len(runs[0]["losses"])
    head = " | ".join(f"loss {e + 1}" for e in range(epochs)) + " | " + " | ".join(f"s {e + 1}" for e in range(epochs))
    lines = [f"`{saved['command']}`", "", f"| optimizer | lr | seeds | {head} |", "|---|---|---|" + "---|" * (2 * epochs)]
    for name in saved["optimizers"]:
        chosen = [run for run in runs if run["optimizer"] == name]
        if not chosen:
            lines.append(f"| {_label(name)} | — | 0 |" + " — |" * (2 * epochs))
            continue
        losses = np.array([run["losses"] for run in chosen], dtype=float)
        ends = np.mean([run["epoch_ends"] for run in chosen], axis=0)
        cells = []
        for column in losses.T:
            finite = column[np.isfinite(column)]
            cells.append("NaN" if len(finite) < len(column) else f"{finite.mean():.4f}")
        cells += [f"{t:.1f}" for t in ends]
        lines.append(f"| {_label(name)} | {chosen[0]['learning_rate']:g} | {len(chosen)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    directories = sys.argv[1:] if argv is None else argv
    if not directories:
        raise SystemExit(__doc__)
    print("\n\n".join(table(directory) for directory in directories))


if __name__ == "__main__":
    main()
