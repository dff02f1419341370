"""Execute the notebooks top to bottom and save them with their outputs (text, tables and plots).

    python notebooks/execute.py            # both notebooks, the sizes a reader wants, saved in place
    python notebooks/execute.py --small    # toy sizes (what the tests run), saved in place
    python notebooks/execute.py quickstart.ipynb --output-dir /tmp/executed

Each notebook reads its sizes from environment variables in its first code cell (`SNGD_NOTEBOOK_SAMPLES`,
`SNGD_NOTEBOOK_EPOCHS`); `--small` sets them to `SMALL_SIZES`, otherwise the notebook's own defaults apply.
Plots are embedded as PNG (the kernel's inline backend); per-cell execution timestamps and TensorFlow's
C++ start-up log lines are dropped, so that the saved outputs are what the notebook computes.
"""

import argparse
import os
import re
import sys
import time

NOTEBOOK_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = ("quickstart.ipynb", "saved_model_walkthrough.ipynb")
SMALL_SIZES = {"SNGD_NOTEBOOK_SAMPLES": "1024", "SNGD_NOTEBOOK_EPOCHS": "2"}
# TensorFlow's C++ start-up lines (absl logging before it is initialized, which TF_CPP_MIN_LOG_LEVEL does
# not silence): machine noise, not something the notebook computes.
_LOG_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d\d).*\n?",
                        flags=re.M)


def execute(name, small=False, output_dir=None, timeout=900):
    """Run notebook `name` (a file in this directory) in a fresh kernel; returns the executed notebook.

    The kernel runs in a temporary working directory and inherits this process's environment, with the
    sizes of `SMALL_SIZES` when `small`, and without `MPLBACKEND`, so figures come out as inline PNGs. When
    `output_dir` is given the executed notebook is written there under the same name.
    """
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(os.path.join(NOTEBOOK_DIRECTORY, name), as_version=4)
    saved_environment = dict(os.environ)
    try:
        os.environ.pop("MPLBACKEND", None)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for key in SMALL_SIZES:
            os.environ.pop(key, None)
        if small:
            os.environ.update(SMALL_SIZES)
        # The package is imported from this checkout, installed or not.
        repository = os.path.dirname(NOTEBOOK_DIRECTORY)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")]))
        with tempfile.TemporaryDirectory() as workdir:
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": workdir}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [output for output in map(_without_log_noise, cell.outputs) if output is not None]
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        nbformat.write(notebook, os.path.join(output_dir, name))
    return notebook


def _without_log_noise(output):
    """The output without TensorFlow's start-up log lines; None when nothing else was in it."""
    if output.output_type == "stream" and output.name == "stderr":
        output.text = _LOG_NOISE.sub("", output.text)
        if not output.text.strip():
            return None
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help=f"which of {', '.join(NOTEBOOKS)} (default: all)")
    parser.add_argument("--small", action="store_true", help="toy sizes: " + ", ".join(
        f"{key}={value}" for key, value in SMALL_SIZES.items()))
    parser.add_argument("--output-dir", default=NOTEBOOK_DIRECTORY, help="where to save (default: in place)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.notebooks if name not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOKS)}")
    for name in args.notebooks or NOTEBOOKS:
        start = time.perf_counter()
        print(f"executing {name} ({'small' if args.small else 'full'} sizes) ...", flush=True)
        execute(name, small=args.small, output_dir=args.output_dir)
        print(f"  saved {os.path.join(args.output_dir, name)} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
