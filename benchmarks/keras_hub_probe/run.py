"""Probe tiny KerasHub models through `reconstruct`, training, `fold` and `.keras` saving.

Each model of `models.py` (57 in keras-hub 0.32: vision, text and audio backbones and tasks, built from
constructor arguments with tiny sizes) runs through `check.py` in a new process on one backend, and this
prints one table row per model: the verdict, the LocalFishers inserted (and how many of them inside
composite layers), the relative differences at the start, after `fold` and after reloading, and what
failed or was left whole.

    python benchmarks/keras_hub_probe/run.py                                 # TensorFlow, every model
    python benchmarks/keras_hub_probe/run.py --backend jax --models vit,qwen3
    python benchmarks/keras_hub_probe/run.py --backend torch --python /path/to/venv/bin/python
    python benchmarks/keras_hub_probe/run.py --set applications             # keras.applications models
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def probe(name, backend, python, timeout):
    environment = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run([python, os.path.join(HERE, "check.py"), name], env=environment, timeout=timeout,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"model": name, "pass": False, "error": f"timed out after {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"model": name, "pass": False, "error": f"exit {done.returncode}: {done.stderr[-300:]}"}


def row(result):
    def number(key):
        value = result.get(key)
        return "" if value is None else f"{value:.1e}"

    notes = []
    if result.get("error"):
        notes.append(f"{result.get('stage', '')}: {result['error'][:160]}")
    for reason, (count, paths) in sorted((result.get("skipped") or {}).items()):
        if "copied whole" in reason or "could not be traced" in reason:
            notes.append(f"left whole: {', '.join(paths)} ({reason.split(':')[0]})")
    if result.get("plain_load_error"):
        notes.append(f"the plain model's own reload fails ({result['plain_load_error'][:80]})")
    if result.get("plain_trained_finite") is False:
        notes.append("not finite after the 3 steps, as the plain model is after the same steps")
    if result.get("plain_load_rel"):
        notes.append(f"the plain model's own reload drifts by {result['plain_load_rel']:.1e}")
    if result.get("unaccounted"):
        notes.append(f"not in the report: {', '.join(result['unaccounted'][:3])}")
    verdict = "not run" if plain_fails(result) else ("pass" if result.get("pass") else "FAIL")
    inserted = "" if result.get("inserted") is None else f"{result['inserted']} ({result.get('inner', 0)})"
    return (f"| {result['model']} | {result.get('class', '')} | {verdict} | {inserted} | {number('reconstruct_rel')} | "
            f"{number('fold_rel')} | {number('load_rel')} / {number('load_folded_rel')} | "
            f"{' '.join('; '.join(notes).replace('|', '/').split())} |")


def plain_fails(result):
    """Whether the plain model itself could not be built or called on this backend (before `reconstruct`:
    Keras's NASNet on PyTorch, for one), so that there is nothing to judge SNGD on."""
    return not result.get("pass") and result.get("stage") == "build" and bool(result.get("error"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--python", default=sys.executable, help="the interpreter (one with the backend installed)")
    parser.add_argument("--set", default="keras_hub", choices=("keras_hub", "applications"),
                        help="the KerasHub models of models.py, or the keras.applications ones of applications.py")
    parser.add_argument("--models", default=None, help="comma-separated names from the set (default: all)")
    parser.add_argument("--timeout", type=int, default=400, help="seconds per model")
    args = parser.parse_args(argv)
    import importlib.util

    module = "models.py" if args.set == "keras_hub" else "applications.py"
    spec = importlib.util.spec_from_file_location("keras_hub_probe_models", os.path.join(HERE, module))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)

    names = list(models.BUILDERS) if args.models is None else [name.strip() for name in args.models.split(",")]
    unknown = [name for name in names if name not in models.BUILDERS]
    if unknown:
        parser.error(f"unknown --models {unknown}")
    print(f"backend {args.backend}; {len(names)} models")
    print("| model | class | verdict | LocalFishers (inside composites) | at start | fold | reload (reconstruction / folded) | notes |")
    print("|---|---|---|---|---|---|---|---|")
    passed = not_run = 0
    for name in names:
        result = probe(name, args.backend, args.python, args.timeout)
        passed += bool(result.get("pass"))
        not_run += plain_fails(result)
        print(row(result), flush=True)
    print(f"\n{passed} of {len(names) - not_run} pass" + (
        f"; {not_run} not run (the plain model fails on this backend)" if not_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
