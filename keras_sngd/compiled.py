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

On JAX and PyTorch `shared` returns the function unchanged: JAX traces the step into one XLA program,
whose compilation does not follow TensorFlow's graph sizes (the MLP's first fit did not change when the
graph shrank by a quarter), and PyTorch runs eagerly.
"""

import keras


def shared(function):
    """`function` compiled once per input signature and called from the train step (TensorFlow), else
    `function` itself.

    Args:
        function: a pure function of tensors and Python values (no variables read or written), returning
            tensors or nested structures of them (tuples, named tuples).

    Returns:
        A callable with `function`'s signature and results.
    """
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, autograph=False, experimental_attributes={"_noinline": True})
