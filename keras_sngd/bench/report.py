"""The main command's report: summary rows over seeds, the Markdown table, the files and the curves."""

import csv
import json
import math
import os
import statistics

import numpy as np

from keras_sngd.bench.optimizers import OPTIMIZERS

METRIC_KEYS = ("test_accuracy", "test_perplexity")
RACE_CAPTION = ("Fit time (compilation included) until each optimizer's seed-averaged loss first reached each "
                "first-order baseline's final loss at an epoch end, and its fraction of that baseline's fit time:")


def _label(name):
    return OPTIMIZERS[name].label if name in OPTIMIZERS else name


def _metric_key(runs):
    return next((key for key in METRIC_KEYS if key in runs[0]), METRIC_KEYS[0])


def _mean_spread(values):
    """`{"mean", "std", "non_finite", "count"}` over seeds.

    `std` is None for a single value (there is no spread to report) and when a seed's value is not finite
    (a diverged seed); `mean` is then NaN or infinite, and `non_finite` counts those seeds.
    """
    values = [float(v) for v in values]
    non_finite = sum(not math.isfinite(v) for v in values)
    spread = statistics.stdev(values) if len(values) > 1 and not non_finite else None
    return {"mean": float(np.mean(values)), "std": spread, "non_finite": non_finite, "count": len(values)}


def _seconds_per_epoch(run):
    # The first epoch also compiles: the median of the later ones, when there are any.
    ends = run["epoch_ends"]
    return statistics.median(np.diff(ends)) if len(ends) > 1 else ends[0]


def target_loss(results, optimizers):
    """The best first-order baseline's seed-averaged final loss (NGD's when no baseline ran), or None."""
    final = {name: [r["losses"][-1] for r in results if r["optimizer"] == name] for name in optimizers}
    ran = [name for name in optimizers if final[name]]
    baselines = [name for name in ran if name in OPTIMIZERS and OPTIMIZERS[name].baseline]
    candidates = baselines or [name for name in ran if name != "sngd"]
    finite = [name for name in candidates if all(math.isfinite(x) for x in final[name])]
    return min((statistics.mean(final[name]) for name in finite), default=None)


def summarize(results, optimizers, grids=None):
    """One row per optimizer: aggregates over seeds, and the time until its loss reached the target.

    The time to target is read off the seed-averaged curve: the first epoch end whose mean loss is at or
    below `target_loss`. An optimizer whose learning-rate grid diverged everywhere (`grids[name]
    ["all_diverged"]`) has no runs; its row says so.
    """
    grids = grids or {}
    target = target_loss(results, optimizers)
    rows = []
    for name in optimizers:
        runs = [r for r in results if r["optimizer"] == name]
        row = {"optimizer": name, "label": _label(name), "target_loss": target, "grid": grids.get(name)}
        if not runs:
            grid = grids.get(name) or {}
            tried = ", ".join(f"{value:g}" for value in grid.get("learning_rates", []))
            status = (f"diverged at every grid learning rate ({tried})" if grid.get("all_diverged")
                      else "not run (the command stopped before it)")
            row.update({"learning_rate": None, "seeds": 0, "status": status})
            rows.append(row)
            continue
        mean_losses = np.mean([r["losses"] for r in runs], axis=0)
        mean_ends = np.mean([r["epoch_ends"] for r in runs], axis=0)
        reached = [float(t) for loss, t in zip(mean_losses, mean_ends) if target is not None and loss <= target * (1 + 1e-9)]
        metric = _metric_key(runs)
        row.update({
            "learning_rate": runs[0]["learning_rate"],
            "seeds": len(runs),
            "status": "trained",
            "seconds_per_epoch": _mean_spread([_seconds_per_epoch(r) for r in runs]),
            "final_training_loss": _mean_spread([r["losses"][-1] for r in runs]),
            metric: _mean_spread([r[metric] for r in runs]),
            "seconds_to_target": reached[0] if reached else None,
        })
        rows.append(row)
    return rows


def _first_reach(losses, ends, target):
    """The first epoch end at which `losses` is at or below `target`, or None (the main table's rule)."""
    return next((float(t) for loss, t in zip(losses, ends) if loss <= target * (1 + 1e-9)), None)


def baseline_race(results, optimizers):
    """Each trained optimizer's time to each first-order baseline's final loss, and that time as a fraction
    of the baseline's own fit time: what a user comparing optimizers by wall-clock time reads.

    On the seed-averaged curves, like the main table: a baseline's target is its mean final loss, and an
    optimizer reaches it at the first epoch end whose mean loss is at or below it. Returns
    `(baselines, rows)`: `baselines` lists `(name, target loss, fit seconds)`; each row is
    `{"optimizer", "label", "reached": {baseline: seconds or None}}`.
    """
    curves = {}
    for name in optimizers:
        runs = [r for r in results if r["optimizer"] == name]
        if runs:
            curves[name] = (np.mean([r["losses"] for r in runs], axis=0), np.mean([r["epoch_ends"] for r in runs], axis=0))
    baselines = [(name, float(curves[name][0][-1]), float(curves[name][1][-1])) for name in curves
                 if name in OPTIMIZERS and OPTIMIZERS[name].baseline and math.isfinite(curves[name][0][-1])]
    rows = [{"optimizer": name, "label": _label(name),
             "reached": {base: _first_reach(losses, ends, target) for base, target, _ in baselines}}
            for name, (losses, ends) in curves.items()]
    return baselines, rows


def race_table(results, optimizers):
    """`baseline_race` as a Markdown table (empty string without a baseline): seconds to each baseline's
    final loss, and the fraction of that baseline's fit time."""
    baselines, rows = baseline_race(results, optimizers)
    if not baselines:
        return ""
    header = " | ".join(f"to {_label(name)}'s {target:.4f} ({seconds:.1f} s)" for name, target, seconds in baselines)
    lines = [f"| optimizer | {header} |", "|---|" + "---|" * len(baselines)]
    for row in rows:
        cells = []
        for name, _, seconds in baselines:
            reached = row["reached"][name]
            cells.append("not reached" if reached is None else f"{reached:.1f} s ({reached / seconds:.2f}x)")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(cell, digits):
    if cell is None:
        return "—"
    if cell.get("non_finite"):
        return f"diverged on {cell['non_finite']} of {cell['count']} seeds"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" ± {cell['std']:.{digits}f}" if cell["std"] is not None else "")


def markdown_table(rows):
    """The summary as a Markdown table; one seed shows plain values, several show mean ± standard deviation."""
    metric_key = next((key for key in METRIC_KEYS for row in rows if key in row), METRIC_KEYS[0])
    metric = metric_key.replace("_", " ")
    target = rows[0]["target_loss"]
    to_target = f"s to loss {target:.4f}" if target is not None else "s to target"
    lines = [f"| optimizer | lr | s/epoch | final training loss | {metric} | {to_target} |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "trained":
            lines.append(f"| {row['label']} | {row['status']} | — | — | — | — |")
            continue
        seconds = "not reached" if row["seconds_to_target"] is None else f"{row['seconds_to_target']:.1f}"
        lines.append(
            f"| {row['label']} | {row['learning_rate']:g} | {_format(row['seconds_per_epoch'], 2)} | "
            f"{_format(row['final_training_loss'], 4)} | {_format(row.get(metric_key), 4)} | {seconds} |"
        )
    return "\n".join(lines)


def write_checkpoint(directory, saved):
    """`results.json` with what has run so far (`saved`), so that an interrupted command loses nothing."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as handle:
        json.dump(dict(saved, complete=False), handle, indent=1, default=str)


def write_outputs(directory, saved, plot=True):
    """`results.json` (everything in `saved`), `results.csv` (one line per epoch) and, if `plot`, `curves.png`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as handle:
        json.dump(saved, handle, indent=1, default=str)
    with open(os.path.join(directory, "results.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "learning_rate", "seed", "epoch", "training_loss", "seconds"])
        for r in saved["runs"]:
            for epoch, (loss, seconds) in enumerate(zip(r["losses"], r["epoch_ends"]), start=1):
                writer.writerow([r["optimizer"], r["learning_rate"], r["seed"], epoch, loss, seconds])
    if plot:
        settings = saved["settings"]
        plot_curves(saved["runs"], saved["summary"], os.path.join(directory, "curves.png"),
                    title=f"{settings['model']} on {settings['dataset']}")


def plot_curves(results, rows, path, title):
    """Seed-averaged training loss per epoch and per wall-clock second, one line per trained optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        runs = [r for r in results if r["optimizer"] == row["optimizer"]]
        if not runs:
            continue
        losses = np.mean([r["losses"] for r in runs], axis=0)
        times = np.mean([r["epoch_ends"] for r in runs], axis=0)
        label = f"{row['label']} (lr {row['learning_rate']:g})"
        by_epoch.plot(np.arange(1, len(losses) + 1), losses, marker="o", label=label)
        by_time.plot(times, losses, marker="o", label=label)
    if rows[0]["target_loss"] is not None:
        for axes in (by_epoch, by_time):
            axes.axhline(rows[0]["target_loss"], color="gray", linestyle=":", linewidth=1)
    for axes, xlabel in ((by_epoch, "epoch"), (by_time, "wall-clock seconds")):
        axes.set_xlabel(xlabel)
        axes.set_ylabel("training loss (epoch mean)")
        axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
    by_epoch.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def resummarize(directory, plot=True):
    """Recompute the summary, table and (if `plot`) curves of an earlier run from `directory/results.json`."""
    path = os.path.join(directory, "results.json")
    with open(path) as handle:
        saved = json.load(handle)
    grids = saved.get("grids") or {}
    optimizers = saved.get("optimizers") or list(dict.fromkeys(
        [run["optimizer"] for run in saved["runs"]] + list(grids)))
    saved["summary"] = summarize(saved["runs"], optimizers, grids)
    write_outputs(directory, saved, plot=plot)
    print(markdown_table(saved["summary"]))
    race = race_table(saved["runs"], optimizers)
    if race:
        print(f"\n{RACE_CAPTION}\n{race}")
    return saved["summary"]
