"""The main command: the table, the files, the flags, the grid search and the errors.

Most tests replace training by a stand-in whose final loss is a known function of the learning rate, so
they check the command's logic in milliseconds; the real-data tests train at toy sizes.
"""

import csv
import json
import math

import numpy as np
import pytest

from keras_sngd import bench
from keras_sngd.bench import cli
from keras_sngd.bench import data as bench_data
from keras_sngd.bench import training
from keras_sngd.bench.optimizers import OPTIMIZERS
from keras_sngd.bench.optimizers import OptimizerSpec
from keras_sngd.models import REFERENCE_MODELS


@pytest.mark.slow
def test_comparison_on_fashion_mnist(tmp_path, capsys, fashion_mnist_directory):
    output = tmp_path / "out"
    rows = bench.main([
        "--samples", "512", "--test-samples", "256", "--epochs", "2", "--optimizers", "muon,ngd,sngd",
        "--verbose", "0", "--output-dir", str(output), "--local-fisher", "update_every=4,max_step=none", "--no-download",
    ])
    printed = capsys.readouterr().out
    assert [row["optimizer"] for row in rows] == ["muon", "ngd", "sngd"]
    for row in rows:
        assert row["seeds"] == 1 and 0.0 < row["test_accuracy"]["mean"] <= 1.0
        assert row["final_training_loss"]["mean"] > 0 and row["seconds_per_epoch"]["mean"] > 0
    # NGD and SNGD are the same method in exact arithmetic (Proposition 1) without SNGD's trust region (NGD has
    # none; reconstruct gives every network one): same losses up to rounding.
    ngd, sngd = rows[1]["final_training_loss"]["mean"], rows[2]["final_training_loss"]["mean"]
    assert abs(ngd - sngd) < 1e-2 * ngd
    assert "| SNGD | 0.1 |" in printed and "| Muon | 0.003 |" in printed and "s to loss" in printed
    summary = json.loads((output / "results.json").read_text())
    assert len(summary["runs"]) == 3 and summary["summary"][0]["target_loss"] == rows[0]["final_training_loss"]["mean"]
    with open(output / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    assert (output / "curves.png").stat().st_size > 10000


@pytest.mark.slow
def test_an_optimizer_is_one_table_row(tmp_path, monkeypatch, fashion_mnist_directory):
    import keras

    built = []

    def build(plain, learning_rate, local_fisher_arguments):
        built.append(learning_rate)
        model = keras.models.clone_model(plain)
        return model, keras.optimizers.SGD(learning_rate)

    monkeypatch.setitem(OPTIMIZERS, "plain_sgd", OptimizerSpec("plain SGD", 0.05, (0.1, 0.05, 0.02, 0.01), True, build))
    rows = bench.main(["--optimizers", "plain_sgd", "--samples", "256", "--test-samples", "128", "--epochs", "1",
                       "--verbose", "0", "--no-plot", "--no-download", "--output-dir", str(tmp_path)])
    assert built == [0.05] and rows[0]["label"] == "plain SGD" and math.isfinite(rows[0]["final_training_loss"]["mean"])


def test_language_model_reports_perplexity(tmp_path):
    corpus = tmp_path / "ptb"
    corpus.mkdir()
    words = "the cat sat on the mat and the dog sat on the log".split()
    for name, repeat in (("ptb.train.txt", 40), ("ptb.valid.txt", 5), ("ptb.test.txt", 5)):
        (corpus / name).write_text("\n".join(" ".join(words) for _ in range(repeat)))
    rows = bench.main([
        "--model", "lstm", "--dataset", "ptb", "--data-dir", str(corpus), "--epochs", "1", "--lstm-layers", "1",
        "--optimizers", "adam,sngd", "--sequence-length", "8", "--batch-size", "8", "--verbose", "0",
        "--output-dir", str(tmp_path / "out"), "--no-plot",
    ])
    assert all(1.0 < row["test_perplexity"]["mean"] < 1000 for row in rows)
    assert not (tmp_path / "out" / "curves.png").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--optimizers", "sgd,lbfgs"],
        ["--optimizers", "sgd,sgd"],
        ["--optimizers", ","],
        ["--lr", "sgd:0.1"],
        ["--lr", "sgd=-1"],
        ["--lr-grid", "0.1,fast"],
        ["--seeds", "0,one"],
        ["--local-fisher", "damping"],
        ["--model", "lstm", "--dataset", "cifar10"],
        ["--model", "mlp", "--dataset", "ptb"],
        ["--dataset", "imagenet"],
        ["--epochs", "0"],
        ["--batch-size", "two"],
        ["--verbose", "3"],
        ["--model", "nope"],
    ],
)
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit):
        bench.parse_arguments(argv)
    assert "error:" in capsys.readouterr().err


def test_flags_are_parsed_by_type():
    args = bench.parse_arguments(["--optimizers", "adam, muon,sngd", "--lr", "sngd=0.2", "--seeds", "3,4",
                                  "--lr-grid", "0.3,0.1", "--local-fisher", "update_every=20,damping=0.03,center=true"])
    assert args.optimizers == ["adam", "muon", "sngd"] and args.seeds == [3, 4] and args.lr_grid == [0.3, 0.1]
    assert args.learning_rates["sngd"] == 0.2 and args.learning_rates["adam"] == OPTIMIZERS["adam"].learning_rate
    assert args.local_fisher == {"update_every": 20, "damping": 0.03, "center": True}
    assert args.dataset == "fashion_mnist" and args.output_dir.endswith("mlp_fashion_mnist")
    assert bench.parse_arguments(["--lr-grid", "default"]).lr_grid == "default"


def test_every_optimizer_has_a_grid_of_the_same_size():
    sizes = {name: len(spec.grid) for name, spec in OPTIMIZERS.items()}
    assert len(set(sizes.values())) == 1, sizes
    for name, spec in OPTIMIZERS.items():
        assert spec.learning_rate in spec.grid, name  # the default is one of the values tuned around


def test_every_reference_model_is_a_choice_with_a_dataset(monkeypatch):
    for model in REFERENCE_MODELS:
        args = bench.parse_arguments(["--model", model])
        assert bench_data.check_model_and_dataset(model, args.dataset) is None
    assert bench.parse_arguments(["--model", "vgg16"]).dataset == "cifar10"

    # A model added to the registry appears without a change to the command; its own default dataset wins.
    def tiny(input_shape=(28, 28, 1), classes=10):
        raise AssertionError("not built while parsing")

    monkeypatch.setitem(REFERENCE_MODELS, "tiny", tiny)
    assert bench.parse_arguments(["--model", "tiny"]).dataset == "fashion_mnist"
    tiny.DEFAULT_DATASET = "mnist"
    assert bench.parse_arguments(["--model", "tiny"]).dataset == "mnist"


# With a stand-in for training.


def fake_loss(name, learning_rate):
    """Lowest at each optimizer's table default; NaN for "ngd" at every rate."""
    if name == "ngd":
        return float("nan")
    return 0.2 + abs(math.log10(learning_rate / OPTIMIZERS[name].learning_rate))


@pytest.fixture
def stand_in(monkeypatch):
    calls = []

    def run_one(name, learning_rate, seed, data, settings):
        calls.append((name, learning_rate, seed))
        final = fake_loss(name, learning_rate) + 0.01 * seed
        losses = [final + 1.0 + 0.1 * (settings.epochs - epoch) for epoch in range(1, settings.epochs)] + [final]
        return {"optimizer": name, "learning_rate": learning_rate, "seed": seed, "losses": losses,
                "epoch_ends": [1.0 + epoch for epoch in range(settings.epochs)], "test_loss": final,
                "test_accuracy": 0.5}

    monkeypatch.setattr(training, "run_one", run_one)
    monkeypatch.setattr(cli, "run_one", run_one)
    tiny = bench_data.Data((np.zeros((4, 28, 28, 1)), np.zeros(4)), (np.zeros((2, 28, 28, 1)), np.zeros(2)),
                           bench_data.Task("classification", 10))
    monkeypatch.setattr(bench_data, "load_data", lambda *args, **kwargs: tiny)
    return calls


def test_default_grid_tunes_each_optimizer_with_the_same_budget(tmp_path, stand_in, capsys):
    rows = bench.main(["--optimizers", "sgd,muon,sngd", "--lr-grid", "default", "--epochs", "2", "--no-plot",
                       "--output-dir", str(tmp_path)])
    grid_calls = [call for call in stand_in if call[2] == 0][: 3 * 5]
    for name in ("sgd", "muon", "sngd"):
        tried = [learning_rate for (called, learning_rate, _) in grid_calls if called == name]
        assert tried[:-1] == list(OPTIMIZERS[name].grid)  # the grid, then the chosen rate with the seed
    assert [row["learning_rate"] for row in rows] == [OPTIMIZERS[name].learning_rate for name in ("sgd", "muon", "sngd")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["grids"]["muon"]["best"] == OPTIMIZERS["muon"].learning_rate
    assert len(saved["grid_runs"]) == 3 * len(OPTIMIZERS["sgd"].grid)


def test_a_grid_that_diverges_everywhere_says_so(tmp_path, stand_in, capsys):
    rows = bench.main(["--optimizers", "adam,ngd", "--lr-grid", "0.3,0.1,0.01", "--seeds", "0,1", "--no-plot",
                       "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "NGD diverged at every learning rate of its grid (0.3, 0.1, 0.01)" in printed
    assert "| NGD | diverged at every grid learning rate (0.3, 0.1, 0.01) |" in printed
    assert rows[1]["status"].startswith("diverged") and rows[1]["learning_rate"] is None
    assert not [call for call in stand_in if call[0] == "ngd" and call[2] == 1]  # no seed runs after the grid
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["grids"]["ngd"]["all_diverged"] is True and saved["grids"]["ngd"]["best"] is None
    assert saved["grids"]["adam"]["all_diverged"] is False
    assert rows[0]["learning_rate"] == min((0.3, 0.1, 0.01), key=lambda lr: fake_loss("adam", lr))


def test_one_seed_shows_no_spread(tmp_path, stand_in, capsys):
    rows = bench.main(["--optimizers", "sgd,sngd", "--no-plot", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "±" not in printed
    assert all(row["final_training_loss"]["std"] is None and row["seconds_per_epoch"]["std"] is None for row in rows)
    rows = bench.main(["--optimizers", "sgd,sngd", "--seeds", "0,1", "--no-plot", "--output-dir", str(tmp_path)])
    assert "±" in capsys.readouterr().out and rows[0]["final_training_loss"]["std"] > 0


def test_summarize_recomputes_and_honours_no_plot(tmp_path, stand_in, capsys):
    bench.main(["--optimizers", "sgd,adam,sngd", "--output-dir", str(tmp_path), "--verbose", "0"])
    first = capsys.readouterr().out
    table = first[first.index("| optimizer"):first.index("\n\nwrote")]
    assert (tmp_path / "curves.png").exists()
    (tmp_path / "curves.png").unlink()
    rows = bench.main(["--summarize", str(tmp_path), "--no-plot"])
    assert capsys.readouterr().out.strip() == table
    assert not (tmp_path / "curves.png").exists() and [row["optimizer"] for row in rows] == ["sgd", "adam", "sngd"]
    bench.main(["--summarize", str(tmp_path)])
    assert (tmp_path / "curves.png").stat().st_size > 10000


def test_missing_dataset_offline_says_how_to_get_it(tmp_path, monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("KERAS_SNGD_DATA", raising=False)
    monkeypatch.setattr("keras_sngd.datasets.registry._read_tfds", lambda *args: (None, "no TFDS copy (test)."))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(SystemExit, match="downloading it failed") as raised:
        bench.main(["--model", "small_cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--verbose", "0",
                    "--output-dir", str(tmp_path / "out")])
    assert "cifar-10-python.tar.gz" in str(raised.value) and "name resolution" in str(raised.value)
    assert not (tmp_path / "out").exists()
    # --no-download: the loader is not even asked.
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: pytest.fail("downloaded"))
    with pytest.raises(SystemExit, match="nothing was downloaded"):
        bench.main(["--model", "small_cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download",
                    "--output-dir", str(tmp_path / "out")])


def test_a_seed_that_diverges_is_reported_not_a_crash(tmp_path, stand_in, monkeypatch, capsys):
    """A grid winner that diverges on a later seed: the table says so (the report used to crash)."""
    original = cli.run_one

    def diverging_on_seed_1(name, learning_rate, seed, data, settings):
        run = original(name, learning_rate, seed, data, settings)
        if name == "sngd" and seed == 1:
            run["losses"][-1] = float("nan")
        return run

    monkeypatch.setattr(cli, "run_one", diverging_on_seed_1)
    rows = bench.main(["--optimizers", "sgd,sngd", "--seeds", "0,1,2", "--no-plot", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| SNGD | 0.1 |" in printed and "diverged on 1 of 3 seeds" in printed
    assert rows[1]["final_training_loss"]["non_finite"] == 1 and rows[1]["final_training_loss"]["std"] is None
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True


def test_every_finished_run_is_saved_when_a_later_one_fails(tmp_path, stand_in, monkeypatch):
    original = cli.run_one

    def failing_on_sngd(name, learning_rate, seed, data, settings):
        if name == "sngd":
            raise RuntimeError("out of memory (test)")
        return original(name, learning_rate, seed, data, settings)

    monkeypatch.setattr(cli, "run_one", failing_on_sngd)
    with pytest.raises(RuntimeError, match="out of memory"):
        bench.main(["--optimizers", "sgd,adam,sngd", "--seeds", "0,1", "--no-plot", "--output-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False and [(r["optimizer"], r["seed"]) for r in saved["runs"]] == [
        ("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)]
    # The partial run can still be summarized.
    rows = bench.main(["--summarize", str(tmp_path), "--no-plot"])
    assert [row["optimizer"] for row in rows] == ["sgd", "adam", "sngd"] and rows[2]["status"].startswith("not run")


def test_baseline_race_reads_each_baselines_target_and_fit_time():
    """The second table: seconds to each first-order baseline's final loss (first epoch end at or below it,
    on the seed-averaged curves) and the fraction of that baseline's own fit time; SNGD is no baseline."""
    from keras_sngd.bench.report import baseline_race
    from keras_sngd.bench.report import race_table

    def run(name, seed, losses, ends):
        return {"optimizer": name, "seed": seed, "learning_rate": 0.1, "losses": losses, "epoch_ends": ends}

    results = [
        run("adam", 0, [0.6, 0.5, 0.4], [2.0, 4.0, 6.0]), run("adam", 1, [0.6, 0.5, 0.4], [2.0, 4.0, 6.0]),
        run("sgd", 0, [0.7, 0.6, 0.55], [1.0, 2.0, 3.0]),
        run("sngd", 0, [0.5, 0.38, 0.3], [3.0, 4.5, 6.0]), run("sngd", 1, [0.5, 0.42, 0.3], [3.0, 4.5, 6.0]),
    ]
    baselines, rows = baseline_race(results, ["sgd", "adam", "sngd"])
    assert [(name, round(target, 4), seconds) for name, target, seconds in baselines] == [
        ("sgd", 0.55, 3.0), ("adam", 0.4, 6.0)]
    reached = {row["optimizer"]: row["reached"] for row in rows}
    assert reached["sngd"] == {"sgd": 3.0, "adam": 4.5}  # mean 0.40 at 4.5 s: reached
    assert reached["sgd"] == {"sgd": 3.0, "adam": None}
    table = race_table(results, ["sgd", "adam", "sngd"])
    assert "4.5 s (0.75x)" in table and "not reached" in table
    assert race_table([results[-1]], ["sngd"]) == ""  # no baseline ran: no table
