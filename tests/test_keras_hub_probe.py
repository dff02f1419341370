"""`benchmarks/keras_hub_probe/run.py`: one KerasHub model through its check, in a new process."""

import importlib.util
import os

import pytest

pytest.importorskip("keras_hub", reason="KerasHub models need keras-hub (pip install -e '.[tests]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_probe_runs_a_model_and_prints_its_row(capsys):
    spec = importlib.util.spec_from_file_location("keras_hub_probe_run",
                                                  os.path.join(ROOT, "benchmarks", "keras_hub_probe", "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--models", "vit"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("| vit |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1:4] == ["ViTBackbone", "pass", "9 (9)"], line
    assert "1 of 1 pass" in out
    with pytest.raises(SystemExit):
        run.main(["--models", "no_such_model"])


def test_a_plain_model_that_fails_on_the_backend_is_not_counted_as_a_failure():
    spec = importlib.util.spec_from_file_location("keras_hub_probe_run",
                                                  os.path.join(ROOT, "benchmarks", "keras_hub_probe", "run.py"))
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    # Keras's NASNet on PyTorch: the plain model cannot be built, so there is no verdict on SNGD.
    unbuildable = {"model": "NASNetMobile", "pass": False, "stage": "build", "error": "ValueError: not available"}
    assert "| not run |" in run.row(unbuildable)
    # A failure after the plain model ran is SNGD's, and a timeout is a failure.
    broken = {"model": "m", "pass": False, "stage": "reconstruct", "error": "TypeError: x"}
    assert "| FAIL |" in run.row(broken)
    assert "| FAIL |" in run.row({"model": "m", "pass": False, "error": "timed out after 400 s"})
