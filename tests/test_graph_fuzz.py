"""`benchmarks/graph_fuzz.py`: random Functional models from a seed, run through the model probe's checks."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.graph_fuzz import random_model  # noqa: E402


def _architecture(model):
    return [(type(layer).__name__, tuple(layer.output.shape) if hasattr(layer, "output") else None)
            for layer in model._flatten_layers(include_self=False, recursive=True)]


def test_a_seed_draws_the_same_model_and_data():
    first, xs, ys, loss = random_model(17)
    again, xs_again, ys_again, _ = random_model(17)
    assert _architecture(first) == _architecture(again)
    for a, b in zip(first.get_weights(), again.get_weights()):
        assert (a == b).all()
    assert all((a == b).all() for a, b in zip(xs, xs_again)) and loss == "mse"


def test_the_seeds_cover_the_graph_corners_the_generator_knows():
    seen = set()
    for seed in range(40):
        model = random_model(seed)[0]
        seen.update(type(layer).__name__ for layer in model._flatten_layers(include_self=False, recursive=True))
        seen.add(f"{len(model.inputs)} inputs")
        seen.add(f"{len(model.outputs)} outputs")
    expected = {"Dense", "EinsumDense", "Conv1D", "Conv2D", "BatchNormalization", "LayerNormalization", "Embedding",
                "MultiHeadAttention", "Bidirectional", "TimeDistributed", "Functional", "Sequential", "Concatenate",
                "Permute", "Flatten", "Masking", "1 inputs", "2 inputs", "3 inputs", "1 outputs", "2 outputs"}
    assert expected <= seen, sorted(expected - seen)
    assert seen & {"LSTM", "GRU", "SimpleRNN"}
    assert seen & {"Add", "Multiply", "Average", "Subtract", "Maximum"}


def test_the_probe_runs_random_models_through_every_check():
    # seed 21: an Embedding, a Masking layer's mask through a GRU, self-attention, two outputs; seed 41:
    # three inputs, a Bidirectional SimpleRNN, an LSTM, Conv1D, TimeDistributed, a nested model, two outputs
    for seed, layers in ((21, {"Masking", "GRU", "MultiHeadAttention", "Embedding"}),
                         (41, {"Bidirectional", "LSTM", "Conv1D", "TimeDistributed", "Functional"})):
        model = random_model(seed)[0]
        assert layers <= {type(layer).__name__ for layer in model._flatten_layers(include_self=False)}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "model_probe.py"), "--subset", "fuzz_21,fuzz_41"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fuzz_21 PASS" in result.stdout and "fuzz_41 PASS" in result.stdout, result.stdout[-3000:]
    assert "# 2 of 2 models pass" in result.stdout


def test_the_probe_explains_its_flags():
    probe = os.path.join(ROOT, "benchmarks", "model_probe.py")
    shown = subprocess.run([sys.executable, probe, "--help"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "--fuzz [deep_]START:STOP" in shown.stdout
    missing = subprocess.run([sys.executable, probe, "--subset"], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "Flag '--subset' needs a value" in missing.stderr
    backwards = subprocess.run([sys.executable, probe, "--fuzz", "5:2"], capture_output=True, text=True, timeout=300)
    assert backwards.returncode != 0 and "Received: --fuzz '5:2'" in backwards.stderr
