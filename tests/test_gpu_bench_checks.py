"""The correctness checks of `benchmarks/gpu.sh` (`benchmarks/gpu_bench.py`) pass here too, so that the one
call on a lent GPU machine is not spent on a broken check."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.gpu_bench import check_function_preservation  # noqa: E402


def test_function_preservation_check_refreshes_every_layer_three_times():
    change, refreshes = check_function_preservation()
    assert refreshes == [3, 3, 3]
    assert change < 1e-3
