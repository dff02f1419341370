"""The main command, at toy sizes: the table, the files, the flags and the errors."""

import csv
import json
import os

import pytest

from keras_sngd import bench
from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY


def needs_fashion_mnist():
    if not os.path.isdir(FASHION_MNIST_DIRECTORY):
        pytest.skip(f"real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist ({FASHION_MNIST_DIRECTORY})")


@pytest.mark.slow
def test_comparison_on_fashion_mnist(tmp_path, capsys):
    needs_fashion_mnist()
    output = tmp_path / "out"
    rows = bench.main([
        "--samples", "512", "--test-samples", "256", "--epochs", "2", "--optimizers", "sgd,adam,radam,ngd,sngd",
        "--seeds", "0,1", "--verbose", "0", "--output-dir", str(output), "--local-fisher", "update_every=4",
    ])
    printed = capsys.readouterr().out
    assert [row["optimizer"] for row in rows] == ["sgd", "adam", "radam", "ngd", "sngd"]
    for row in rows:
        assert row["seeds"] == 2 and 0.0 < row["test_accuracy"]["mean"] <= 1.0
        assert row["final_training_loss"]["mean"] > 0 and row["seconds_per_epoch"]["mean"] > 0
    # NGD and SNGD are the same method in exact arithmetic (Proposition 1): same losses up to rounding.
    ngd, sngd = rows[3]["final_training_loss"]["mean"], rows[4]["final_training_loss"]["mean"]
    assert abs(ngd - sngd) < 1e-2 * ngd
    assert "| SNGD | 0.1 |" in printed and "s to loss" in printed
    summary = json.loads((output / "results.json").read_text())
    assert len(summary["runs"]) == 10 and summary["summary"][0]["target_loss"] is not None
    with open(output / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 20
    assert (output / "curves.png").stat().st_size > 10000


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
        ["--lr", "sgd:0.1"],
        ["--model", "lstm", "--dataset", "cifar10"],
        ["--epochs", "0"],
        ["--model", "nope"],
    ],
)
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit):
        bench.parse_arguments(argv)
    assert capsys.readouterr().err


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar"):
        bench.main(["--model", "small_cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--verbose", "0",
                    "--output-dir", str(tmp_path / "out")])
