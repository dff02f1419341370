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


OUTPUT_PREFIXES = ("# LocalFisher", "# reconstruct:", "#   +")


def run_block(block):
    """Execute a README block; check every output line it shows (up to a trailing '...') was printed."""
    expected = [line[2:].split("...")[0] for line in block.splitlines() if line.startswith(OUTPUT_PREFIXES)]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, README, "exec"), {})
    assert expected
    for line in expected:
        assert line in output.getvalue(), (line, output.getvalue()[-2000:])


@pytest.mark.slow
def test_quickstart_runs_as_written():
    if not os.path.isdir(FASHION_MNIST_DIRECTORY):
        pytest.skip(f"real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist ({FASHION_MNIST_DIRECTORY})")
    run_block(python_blocks()[0])


def test_reconstruct_example_runs_as_written():
    run_block(python_blocks()[1])
