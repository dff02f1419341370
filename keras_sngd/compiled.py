"""One compiled copy of a refresh computation per input shape, shared by every layer (TensorFlow).

A `LocalFisher`'s refresh (the drift estimate, the warm-started Newton-Schulz iteration, the low-rank
subspace iteration) is a pure function of tensors: `G`, the current `U`, and Python settings. Traced
inline into the train step, every layer adds its own copy of it to the step's graph, and TensorFlow
traces, optimizes and instantiates each copy before the first step, although the refresh runs only on
due steps and layers of the same width compute the same thing. `shared` makes such a function a
`tf.function` that is

- traced once per input signature (shape, dtype and the Python arguments): the layers of equal width
  call one graph, within a model and across the models of a process (a notebook that builds and fits
  several models traces it once);
- called, not inlined (`_noinline`): the step's graph holds one call operation per layer, and TensorFlow
  instantiates and optimizes the called graph once, when a due step first runs it, instead of optimizing
  its copies as part of the step before the first step.

Measured (`python benchmarks/compile_cost.py`, MobileNetV2 with 35 LocalFishers; and
`python benchmarks/overhead.py`'s first-fit table for the paper's MLP): see the README's speed section.
The numerics are those of the function itself: the same operations run, only their graph is shared.

On JAX, inside the train step there is nothing to share: JAX traces the step into one XLA program, and
XLA inlines any function called from it, so its compilation does not follow TensorFlow's graph sizes
(the MLP's first fit did not change when the graph shrank by a quarter). Called outside a trace, with
concrete arrays (`LocalFisher.refresh()`, which `FunctionPreservingRefresh` runs between steps), the
function is `jax.jit`-compiled once per signature (the arrays' shapes and dtypes, the Python arguments'
values) and the compiled program is reused by every layer of that signature and every later call.
Without it each refresh ran op by op and compiled its Newton-Schulz `while_loop` anew at every call: on
the paper MLP 1.33 s of refreshes per epoch of 313 steps (93 drift checks, 5 refreshes; cProfile on the
development machine), against about 0.39 s for the whole epoch with the refresh inside the step.
PyTorch runs eagerly.

**Full float32 products.** On GPUs with tensor cores, JAX's default precision for float32 matrix products
is TensorFloat-32 (a 10-bit mantissa, relative rounding about 5e-4), and PyTorch uses it where the user
allowed it (`torch.set_float32_matmul_precision("high")`). That is harmless for the network's own layers
but not for the refresh: the Newton-Schulz iteration must drive `||A^(-1/2) A A^(-1/2) - I||` below 1e-4 and
a refresh is accepted only below 1e-3, which products rounded at 5e-4 cannot reach for wide layers (a
rejected refresh keeps the old `U`; training would silently stop adapting it). So on those backends
`shared` runs the function with full float32 products: under `jax.default_matmul_precision("highest")`
(a trace-time setting: the products traced inside carry `Precision.HIGHEST`, the rest of the step keeps
the user's precision), and on PyTorch under `torch.set_float32_matmul_precision("highest")`, restored on
return. TensorFlow has only a process-wide switch (`tf.config.experimental.enable_tensor_float_32_execution`,
on by default on Ampere and later GPUs), so a LocalFisher built there with a GPU visible and that switch
on warns once (`warn_if_tensor_float_32`) and names the two ways out: that switch off, or
`refresh_dtype="float64"` (the iteration in float64, which TensorFloat-32 does not touch).

Measured on an NVIDIA H200 with JAX (`bash benchmarks/gpu.sh`, `benchmarks/results/gpu/README.md`): the
warm-started refresh at TensorFloat-32 had errors of `U U^T` against `G_d^-1` of 2e-3 (condition 1e2) to
1.8e-2 (1e4), still accepted, and cold refreshes at condition 1e4 were rejected after 33 iterations; with
full float32 products, 1.4e-6 to 3.6e-5, as on a CPU.
"""

import contextlib
import functools
import warnings

import keras

_TENSOR_FLOAT_32_WARNED = []


def shared(function):
    """`function` compiled once per input signature and called from the train step (TensorFlow); on JAX
    run with full float32 matrix products, inlined into a trace and compiled once per signature outside
    one; on PyTorch run with full float32 matrix products.

    Args:
        function: a pure function of tensors and Python values (no variables read or written), returning
            tensors or nested structures of them (tuples, named tuples).

    Returns:
        A callable with `function`'s signature and results.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_shared(function)
    if backend == "torch":

        @functools.wraps(function)
        def full_precision(*args, **kwargs):
            with full_float32_products():
                return function(*args, **kwargs)

        return full_precision
    if backend != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, autograph=False, experimental_attributes={"_noinline": True})


def _jax_shared(function):
    """`function` with full float32 products: inlined when traced (inside the train step), else run as one
    `jax.jit` program per signature.

    Array leaves of the arguments (JAX or NumPy arrays) are the program's inputs; every other leaf (Python
    numbers, strings, booleans) is a static argument, part of the signature. Structures (tuples, named
    tuples, `None`) are kept.
    """
    import jax
    import numpy as np

    programs = {}

    @functools.wraps(function)
    def full_precision(*args, **kwargs):
        leaves, structure = jax.tree_util.tree_flatten((args, kwargs))
        leaves = [leaf.value if isinstance(leaf, keras.Variable) else leaf for leaf in leaves]
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            with full_float32_products():
                return function(*args, **kwargs)
        is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray, np.generic)) for leaf in leaves)
        static = tuple(leaf for leaf, array in zip(leaves, is_array) if not array)
        key = (structure, is_array, tuple((type(value), value) for value in static))
        program = programs.get(key)
        if program is None:

            def pure(*arrays):
                arrays, constants = iter(arrays), iter(static)
                full = [next(arrays) if array else next(constants) for array in is_array]
                call_args, call_kwargs = jax.tree_util.tree_unflatten(structure, full)
                with full_float32_products():
                    return function(*call_args, **call_kwargs)

            program = programs[key] = jax.jit(pure)
        return program(*(leaf for leaf, array in zip(leaves, is_array) if array))

    full_precision.programs = programs
    return full_precision


@contextlib.contextmanager
def full_float32_products():
    """Matrix products traced (JAX) or run (PyTorch) inside are full float32, not TensorFloat-32.

    A no-op on other backends and on processors without TensorFloat-32.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
    elif backend == "torch":
        import torch

        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)
    else:
        yield


def warn_if_tensor_float_32(layer_name, refresh_dtype):
    """Warn once per process when TensorFlow would run a float32 refresh's products in TensorFloat-32.

    True when it warned (TensorFlow, a GPU visible, TensorFloat-32 execution on, `refresh_dtype` float32).
    """
    if keras.backend.backend() != "tensorflow" or refresh_dtype != "float32" or _TENSOR_FLOAT_32_WARNED:
        return False
    import tensorflow as tf

    if not (tf.config.list_logical_devices("GPU") and tf.config.experimental.tensor_float_32_execution_enabled()):
        return False
    _TENSOR_FLOAT_32_WARNED.append(layer_name)
    warnings.warn(
        f"LocalFisher '{layer_name}': TensorFlow runs float32 matrix products on this GPU in TensorFloat-32 "
        "(10-bit mantissa), too coarse for the Newton-Schulz refresh of G^(-1/2) (errors up to 1e-2, and "
        "rejected refreshes, on ill-conditioned statistics). Call "
        "tf.config.experimental.enable_tensor_float_32_execution(False) before training, or pass "
        "refresh_dtype='float64' to the LocalFishers (reconstruct(..., local_fisher_arguments="
        "{'refresh_dtype': 'float64'})).",
        stacklevel=3,
    )
    return True
