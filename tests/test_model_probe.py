"""`benchmarks/model_probe.py` runs a model through its six checks and prints its row."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_probe_runs_a_model_and_prints_its_row():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "model_probe.py"), "--subset", "einsum_unusual"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "einsum_unusual PASS" in result.stdout, result.stdout[-3000:]
    assert "# 1 of 1 models pass" in result.stdout


def test_an_unknown_model_name_is_an_error():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "model_probe.py"), "--subset", "no_such_model"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode != 0 and "--subset names unknown models ['no_such_model']" in result.stderr
