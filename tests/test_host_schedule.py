"""The refresh schedule read on the host on PyTorch (`keras_sngd.host_schedule`) and the device scalars
(`keras_sngd.device_scalars`): the same training as deciding on the device, and no host synchronization
on the steps that neither check nor refresh (`scripts/host_schedule_check.py`, in a subprocess)."""

import os

import keras
import numpy as np
import pytest

from keras_sngd import host_schedule
from keras_sngd.device_scalars import scalar
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "host_schedule_check.py")


def test_on_torch_the_host_decides_as_the_device_and_quiet_steps_do_not_synchronize():
    report = run_on_installed("torch", SCRIPT)
    assert report["backend"] == "torch"
    # Decided on the host or on the device: the same training, bit for bit, through refreshes and the
    # adaptive statistics period.
    assert report["refreshes"] >= 4
    assert report["loss_difference"] == 0.0 and report["state_difference"] == 0.0
    assert report["counters_host"] == report["counters_device"]
    assert any(counters["statistics_period"] > 1 for counters in report["counters_host"].values())
    # Steps that neither check nor refresh make no synchronization from the package.
    assert report["quiet_steps"] == 4 and report["quiet_step_syncs"] == 0, report["quiet_sync_sites"]
    assert report["steps_after_quiet"] == [report["steps_after_quiet"][0]] * len(report["steps_after_quiet"])
    # Counters written behind the layer's back are read again: an assigned step checks on schedule, and
    # load_weights brings the step back.
    assert report["step_after_assign"] == 10 and report["refreshed_after_assign"] == 1
    assert report["step_after_load"] == 4
    assert report["scalar"] == [0.5, "torch.float32", "torch.bool", True]
    assert report["scalar_reused"] and report["scalar_syncs"] == 0


class _Tensor:
    """A stand-in for a torch tensor: `item()` counts the reads, `_version` the in-place writes."""

    def __init__(self, value):
        self.value, self._version, self.reads = value, 0, 0

    def item(self):
        self.reads += 1
        return self.value

    def write(self, value):
        self.value, self._version = value, self._version + 1


class _Variable:
    def __init__(self, value):
        self.value = _Tensor(value)


def test_host_mirror_reads_once_and_follows_recorded_writes():
    mirror, variable = host_schedule.HostMirror(), _Variable(7)
    assert mirror.read(variable) == 7 and mirror.read(variable) == 7
    assert variable.value.reads == 1
    variable.value.write(8)  # the layer's own write, recorded: no read
    mirror.record(variable, 8)
    assert mirror.read(variable) == 8 and variable.value.reads == 1


def test_host_mirror_reads_again_after_a_write_it_did_not_record():
    mirror, variable = host_schedule.HostMirror(), _Variable(3)
    assert mirror.read(variable) == 3
    variable.value.write(100)  # e.g. load_weights, BackupAndRestore, an assignment by hand
    assert mirror.read(variable) == 100 and variable.value.reads == 2
    variable.value = _Tensor(5)  # a new tensor with the same version
    assert mirror.read(variable) == 5
    mirror.forget()
    assert mirror.read(variable) == 5 and variable.value.reads == 2


def test_the_host_schedule_is_off_on_compiled_backends():
    if keras.backend.backend() == "torch":
        pytest.skip("the PyTorch backend reads the schedule on the host")
    assert not host_schedule.active(keras.Variable(np.int32(1), dtype="int32"))


@pytest.mark.parametrize("value,dtype", [(0.25, "float32"), (1, "int32"), (True, "bool")])
def test_scalar_is_the_number_as_a_tensor(value, dtype):
    tensor = scalar(value, dtype)
    assert keras.backend.standardize_dtype(tensor.dtype) == dtype
    assert keras.ops.convert_to_numpy(tensor).item() == value
    assert tuple(tensor.shape) == ()


def test_on_torch_jit_compile_runs_the_bookkeeping_eagerly_and_matches_eager_training():
    """`jit_compile=True` (`torch.compile`): the bookkeeping runs eagerly between compiled pieces, so the
    training equals the eager one and Dynamo never reaches its recompile limit (before: every new counter
    value recompiled, the limit was hit, and a small reconstructed MLP's first two steps took 78 s against
    18 s for the plain model; `benchmarks/results/torch_compile.txt`)."""
    report = run_on_installed("torch", os.path.join(os.path.dirname(__file__), "scripts", "torch_compile_check.py"))
    eager_losses, eager_steps, eager_refreshes = report["eager"]
    losses, steps, refreshes = report["compiled"]
    assert steps == eager_steps == [16, 16] and refreshes == eager_refreshes and min(refreshes) >= 1
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    assert report["limit_hits"] == 0
