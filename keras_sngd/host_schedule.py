"""The refresh schedule read on the host, without a device synchronization, on eager backends (PyTorch).

A `LocalFisher` decides on every training step whether to take the batch into its statistics and whether
to check for a refresh:

```
check = (step % update_every == 0)                      # (or every adaptive statistics period)
take  = (refresh_count == 0) or ((step - 1) % period == 0)
```

`step`, `refresh_count` and the adaptive `statistics_period` are scalar variables on the device. On the
TensorFlow and JAX backends the step is a compiled program and the decisions are conditionals inside it.
On PyTorch the step runs eagerly, and `keras.ops.cond(pred, ...)` is a Python `if`: converting a device
`pred` to a Python bool copies it to the host and waits for every operation queued on the device before
it. On a GPU each such wait drains the queue that PyTorch's asynchronous launches keep full, so the next
kernels start only after Python has caught up. Counted on the development machine's CPU with the
reconstructed ResNet-18 (21 LocalFishers, `benchmarks/torch_host_syncs.py`): one such wait per
LocalFisher on every step, next to the Python numbers `keras.ops` copied to the device
(`keras_sngd.device_scalars`), 337 waits in all on each step that neither checks nor refreshes, where SGD
makes none; now none.

`HostMirror` keeps a Python copy of such scalar variables. It reads a variable once (one wait) and then
follows it without reading: the layer records the value it assigns whenever it knows it on the host (the
step count, `+1` per step). A copy is valid only while the variable's storage is the same tensor with the
same in-place version (`torch.Tensor._version`, which every in-place write increments): anything else that
writes the variable (a refresh that counts, `model.load_weights`, `BackupAndRestore`, an assignment by
hand) makes the next read go to the device again. So the decisions are exactly those the device values
give, with no wait on the steps that neither check nor refresh.

Only where it helps and is safe: the PyTorch backend, outside `torch.compile` (whose graphs should not
branch on Python values) and outside Keras's symbolic calls on the `meta` device. Elsewhere `active()` is
False and the layer decides on the device as before.
"""

import keras


def active(variable):
    """Whether `variable`'s schedule may be read on the host: PyTorch, eager, not a symbolic call."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    if torch.compiler.is_compiling():
        return False
    return variable.value.device.type != "meta"


class HostMirror:
    """Python copies of scalar variables, valid while nothing else writes them (PyTorch).

    `read(variable)` returns the variable's value as a Python number: the recorded copy when the
    variable's tensor has not been written since, else the device value (one synchronization).
    `record(variable, value)` notes `value` as the variable's value right after the caller assigned it.
    """

    def __init__(self):
        self._copies = {}

    def read(self, variable):
        tensor = variable.value
        copy = self._copies.get(id(variable))
        if copy is not None and copy[0] is tensor and copy[1] == tensor._version:
            return copy[2]
        value = tensor.item()
        self._copies[id(variable)] = (tensor, tensor._version, value)
        return value

    def record(self, variable, value):
        tensor = variable.value
        self._copies[id(variable)] = (tensor, tensor._version, value)

    def forget(self):
        self._copies.clear()
