"""The notebooks: committed executed (a reader sees the outputs), and still running top to bottom."""

import importlib.util
import os

import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = ("quickstart.ipynb", "saved_model_walkthrough.ipynb")


def load_executor():
    spec = importlib.util.spec_from_file_location("notebook_executor", os.path.join(NOTEBOOKS, "execute.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_outputs(notebook):
    return "".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


def check_outputs(name, notebook):
    outputs = code_outputs(notebook)
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors and "Traceback" not in outputs
    if name == "quickstart.ipynb":
        assert "refreshes" in outputs and "SNGD  final training loss" in outputs and "test accuracy" in outputs
    else:
        assert "same outputs: True" in outputs and "same parameter count as the original: True" in outputs


def test_executor_knows_every_notebook():
    assert set(load_executor().NOTEBOOKS) == {name for name in os.listdir(NOTEBOOKS) if name.endswith(".ipynb")}
    assert set(NAMES) == set(load_executor().NOTEBOOKS)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_shows_its_outputs(name):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # Executed in one top-to-bottom run: counts 1, 2, 3, ...
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    check_outputs(name, notebook)
    if name == "quickstart.ipynb":
        images = [output for cell in code for output in cell.outputs if "image/png" in output.get("data", {})]
        assert images, "the training curves should be embedded as a PNG"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_at_small_size(name, fashion_mnist_directory, tmp_path):
    notebook = load_executor().execute(name, small=True, output_dir=str(tmp_path))
    check_outputs(name, notebook)
    assert "training: (1024," in code_outputs(notebook)
    assert (tmp_path / name).exists()
