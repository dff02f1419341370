"""Python numbers as tensors on the device, made without a host-to-device copy (PyTorch).

`keras.ops` functions convert their Python-number arguments to tensors: `ops.where(ok, x, 0.0)`,
`ops.maximum(count, 1.0)`. On the PyTorch backend that conversion is `torch.as_tensor(value,
device=...)`, which builds the number on the host and copies it to the device with a blocking copy: on a
GPU, PyTorch's `copy_` without `non_blocking` ends with `cudaStreamSynchronize`, so the host waits for
every kernel queued before it. A LocalFisher's training step used about a dozen such numbers (the
statistics' decay and guards, the trust region's bound), so a reconstructed ResNet-18 made about 250
synchronizations per step where SGD makes two (counted on the CPU with `benchmarks/torch_host_syncs.py`;
on the CPU they cost little, on a GPU each drains the launch queue).

`scalar(value)` makes the number with a fill kernel on the device instead (`torch.full`, whose fill value
is a kernel argument), once per value, dtype and device, and reuses it. On TensorFlow and JAX, whose
steps are compiled and whose constants live in the program, it is `keras.ops.convert_to_tensor`.
Operators with a Python number (`x * 0.5`, `x + 1.0`) need nothing: every backend passes the number to
the kernel.
"""

import keras

_CACHE = {}


def scalar(value, dtype="float32"):
    """The 0-d tensor `value` (a Python number) of `dtype` on the current device, made without a copy from
    the host on PyTorch."""
    if keras.backend.backend() != "torch":
        return keras.ops.convert_to_tensor(value, dtype)
    import torch
    from keras.src.backend.torch.core import get_device
    from keras.src.backend.torch.core import to_torch_dtype

    device = get_device()
    if torch.compiler.is_compiling():  # a constant of the compiled graph: nothing to keep
        return torch.full((), value, dtype=to_torch_dtype(dtype), device=device)
    key = (type(value), value, dtype, str(device))
    if key not in _CACHE:
        _CACHE[key] = torch.full((), value, dtype=to_torch_dtype(dtype), device=device)
    return _CACHE[key]
