"""Run a benchmark function in a new Python process, so that what it times starts from nothing.

TensorFlow and `keras_sngd.compiled` keep what a process has traced: the second model of a process
reuses the compiled refresh of the first (a notebook that fits several models pays for it once). A
first-fit or time-to-loss figure that a new user would see must not inherit that, so the benchmarks
time each such fit in a process of its own (spawned, not forked: a fork would inherit the parent's
TensorFlow state). Importing TensorFlow in the new process is not timed.
"""

import concurrent.futures
import multiprocessing


def run_fresh(function, *args, **kwargs):
    """`function(*args, **kwargs)` in a new Python process; returns its (picklable) result.

    `function` must be importable by name (a module-level function of an importable module, or of the
    script being run).
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args, **kwargs).result()
