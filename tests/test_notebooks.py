"""The notebooks run top to bottom (at small sizes), so they never rot."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", "saved_model_walkthrough.ipynb"])
def test_notebook_executes(name, monkeypatch, tmp_path):
    if not os.path.isdir(FASHION_MNIST_DIRECTORY):
        pytest.skip(f"real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist ({FASHION_MNIST_DIRECTORY})")
    monkeypatch.setenv("SNGD_NOTEBOOK_SAMPLES", "1024")
    monkeypatch.setenv("SNGD_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "Error" not in outputs
    if name == "quickstart.ipynb":
        assert "refreshes" in outputs and "'SNGD'" in outputs
    else:
        assert "same outputs: True" in outputs and "same parameter count as the original: True" in outputs
