"""The README's quickstart runs as written and prints what the README says it prints."""

import contextlib
import io
import os
import re

import pytest

from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), flags=re.S)


@pytest.mark.slow
def test_quickstart_runs_as_written():
    if not os.path.isdir(FASHION_MNIST_DIRECTORY):
        pytest.skip(f"real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist ({FASHION_MNIST_DIRECTORY})")
    quickstart = python_blocks()[0]
    expected = [line[2:] for line in quickstart.splitlines() if line.startswith("# LocalFisher")]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(quickstart, README, "exec"), {})
    assert expected and expected[-1] in output.getvalue()
