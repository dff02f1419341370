"""The README's quickstart runs as written and prints what the README says it prints."""

import contextlib
import io
import os
import re

import pytest


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
def test_quickstart_runs_as_written(fashion_mnist_directory):
    run_block(python_blocks()[0])


def test_reconstruct_example_runs_as_written():
    run_block(python_blocks()[1])


def test_keras_hub_example_runs_as_written():
    pytest.importorskip("keras_hub", reason="the example needs keras-hub (pip install -e '.[tests]')")
    run_block(python_blocks()[2])


def bash_commands():
    """Every command line of the README's bash blocks, without comments, split at `&&`."""
    with open(README) as handle:
        blocks = re.findall(r"```bash\n(.*?)```", handle.read(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [part.strip() for line in lines if line for part in line.split("&&")]


def pyproject_extras():
    with open(os.path.join(os.path.dirname(README), "pyproject.toml")) as handle:
        text = handle.read()
    section = text.split("[project.optional-dependencies]")[1].split("\n[")[0]
    return set(re.findall(r"^(\w+) = \[", section, flags=re.M))


def test_first_command_installs_what_it_needs_then_runs_the_main_job():
    with open(README) as handle:
        first = re.search(r"```bash\n(.*?)```", handle.read(), flags=re.S).group(1).split("#")[0].strip()
    install, run = [part.strip() for part in first.split("&&")]
    assert re.fullmatch(r'pip install "\.\[bench\]"', install) and run == "python -m keras_sngd.bench"
    assert "matplotlib" in open(os.path.join(os.path.dirname(README), "pyproject.toml")).read().split("bench = [")[1]


def test_every_pip_extra_in_the_readme_exists():
    extras = [extra for command in bash_commands() for extra in re.findall(r'pip install (?:-e )?"\.\[(\w+)\]"', command)]
    assert {"bench", "tests"} <= set(extras)
    assert set(extras) <= pyproject_extras(), set(extras) - pyproject_extras()


def test_every_main_command_in_the_readme_parses():
    import shlex

    from keras_sngd import bench

    commands = [command for command in bash_commands() if command.startswith("python -m keras_sngd.bench")]
    assert commands
    for command in commands:
        bench.parse_arguments(shlex.split(command)[3:])
