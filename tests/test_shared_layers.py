"""Shared layers on every backend (`scripts/shared_layers_check.py`, in subprocesses): one LocalFisher per
shared consumer, one step per batch, the trust region's hand-over once per step, the function kept.

Before: the shared LocalFisher counted calls, handed the trust region's "previous weights" to the
optimizer once per call (summed by autodiff: the bound measured against `2 W'`, and the kernel's norm
doubled every step at SGD 1e-3), and on PyTorch a refresh at the second call rewrote tensors the first
call had saved for backward (a RuntimeError in `fit`)."""

import os

import pytest

from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "shared_layers_check.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_shared_layers(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    for name in ("siamese", "chain", "nested_twice"):
        case = report[name]
        # 8 batches: every LocalFisher counts 8 steps, the shared one too, and refreshes.
        assert case["steps"] == [8] * len(case["steps"]), (name, case)
        assert min(case["refreshes"]) >= 1, (name, case)
        assert case["relative_change"] < 1e-4, (name, case)
        assert 0.9 < case["kernel_norm_ratio"] < 1.1, (name, case)
        losses = case["losses"]
        assert all(loss == loss for loss in losses) and losses[-1] < losses[0], (name, case)
