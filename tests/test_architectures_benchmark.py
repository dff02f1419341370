"""`benchmarks/architectures.py`: every model builds, and `reconstruct` whitens what it should in each
(the attention layers' query, key and value included, and the layers inside KerasHub's encoders); one tiny
run on real data."""

import os
import subprocess
import sys

import keras

import keras_sngd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.architectures import MODELS  # noqa: E402


def test_models_and_what_reconstruct_whitens():
    expected = {"transformer_rows": 8, "keras_hub_transformer_rows": 10, "gru_rows": 3, "separable_cnn": 3,
                "groupnorm_cnn": 4, "plain_deep_cnn": 8, "mobilenet_v2": 36}
    for name, build in MODELS.items():
        _, report = keras_sngd.reconstruct(build(), return_report=True)
        assert len(report.inserted) == expected[name], (name, str(report))
        if name == "transformer_rows":
            kinds = [entry[1] for entry in report.inserted]
            assert kinds.count("MultiHeadAttention") == 2, str(report)
            assert not any(entry[1] == "MultiHeadAttention" for entry in report.skipped)
        if name == "keras_hub_transformer_rows":
            # Inside each encoder: the attention's query, key and value (one tensor) and output projection,
            # the MLP's two layers.
            inside = [entry[0] for entry in report.inserted if "/" in entry[0]]
            assert sorted(inside) == sorted(f"encoder_{index}/{layer}" for index in (1, 2) for layer in (
                "query+key+value", "attention_output", "feedforward_intermediate_dense",
                "feedforward_output_dense")), str(report)
    keras.backend.clear_session()


def test_tiny_run():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "architectures.py"), "--models",
         "transformer_rows,keras_hub_transformer_rows", "--runs",
         "sngd:0.03,sngd-composites-whole:0.03",
         "--samples", "256", "--epochs", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| transformer_rows", "| keras_hub"))]
    assert len(rows) == 4, result.stdout
    for row in rows:
        loss = float(row.split("|")[4])
        assert 0.0 < loss < 3.0, row
