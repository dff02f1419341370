"""The drift check and the refresh of a TensorFlow train step, run on the host when due (`tf.py_function`).

A `LocalFisher` checks every `update_every` steps whether `U` still whitens `G`, and refreshes it when not
(`FisherLayer._refresh_if_due`). Inside the compiled train step that decision is a conditional whose
branches hold the drift estimate, the warm-started Newton-Schulz refresh, the batch-leverage scale, the
re-expression of the consumers' kernels and the counters. TensorFlow traces both branches of every
conditional before the first step, so a new process pays for tracing and optimizing the refresh of every
layer before it trains at all, although the branch runs on one step in ten and its heavy parts are
compiled functions shared by the layers of equal width (`keras_sngd.compiled`). On the paper's MLP that
tracing was most of what SNGD's first `fit` costs beyond Adam's (`benchmarks/first_fit_parts.py`).

Here the checking branch holds one operation instead: a `tf.py_function` that calls back into Python when
the branch runs, and there runs the same code eagerly: the drift through the shared compiled function, and,
when due, the refresh through the shared compiled refresh, the re-expression and the counters, assigning
the same variables. The step's graph is smaller by the whole refresh, and the compiled parts are traced when
first needed, once per shape. The numbers are the same as inside the graph: the same operations on the
same values, in the same step (the new `U` whitens this step's output and the consumers' kernels hold the
re-expressed weights before they are read).

Ordering. The callback's body reads and writes variables that TensorFlow cannot see it touch. So the call
takes the handles of every variable the refresh may read or write (the layer's state and the consumers'
kernels and biases) as inputs: TensorFlow's automatic control dependencies then order it after the
step's earlier reads and writes of those variables (the statistics just taken) and before the later ones
(the consumers' forward pass, the optimizer's update). The moving statistics of this batch are passed as
values.

Threads. The callback runs on one of TensorFlow's inter-op threads and waits there while the shared
compiled functions it calls run on the others. Two callbacks at once (LocalFishers on parallel branches,
statistics-only layers) could hold every inter-op thread of a 2-core machine, each waiting for a function
that no thread is left to run: a deadlock, met in testing. So every call also takes one process-wide
variable's handle: TensorFlow orders all accesses to a resource, so the callbacks of a step run one at a
time, and the one running leaves the other threads to its functions. With a single inter-op thread
(`tf.config.threading.set_inter_op_parallelism_threads(1)`, or one CPU) there would be none left: there
the refresh stays in the graph.

Where it does not apply, the refresh stays in the graph as before (`available()` is False): a single
inter-op thread (above), other
backends (JAX compiles the step into one XLA program, with the handoff to the optimizer; PyTorch runs
eagerly, with the schedule on the host, `keras_sngd.host_schedule`), eager execution
(`run_eagerly=True`: the conditional is already a Python `if`), XLA compilation (`jit_compile=True`: XLA
cannot call into Python), and data-parallel replicas (`tf.distribute` with more than one replica: each
replica's body would run on its own thread with mirrored variables).
"""

import os

import keras

# The process-wide variable whose handle every host call takes, so that they run one at a time (see above).
_SERIALIZER = []


def inter_op_threads():
    """The number of TensorFlow's inter-op threads: the configured number, else (0, the default) one per
    CPU this process may run on."""
    import tensorflow as tf

    configured = tf.config.threading.get_inter_op_parallelism_threads()
    if configured:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available():
    """Whether a refresh traced now may run on the host: TensorFlow, inside a `tf.function` graph, not
    compiled by XLA, with one replica and at least two inter-op threads."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    from keras_sngd.distributed import replicas_in_sync

    if tf.executing_eagerly() or replicas_in_sync() > 1 or inter_op_threads() < 2:
        return False
    return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _serializer():
    """The process-wide variable that orders the host calls (created once, outside any trace)."""
    import tensorflow as tf

    if not _SERIALIZER:
        with tf.init_scope():
            _SERIALIZER.append(tf.Variable(0, trainable=False, name="keras_sngd_host_refresh_order"))
    return _SERIALIZER[0]


def call_on_host(function, inputs, like, variables):
    """`function(*inputs)` run eagerly when the graph executes this call; returns its result.

    Args:
        function: a Python function of eager tensors, returning a structure of tensors (or variables) with
            the structure, dtypes and shapes of `like`.
        inputs: graph tensors, passed to `function` as eager tensors with the same values.
        like: a structure of graph tensors with the result's structure, dtypes and static shapes.
        variables: the Keras variables `function` reads or writes; their handles order the call among
            the graph's other uses of them (they are not passed to `function`), as the handle of one
            process-wide variable orders it among the other host calls.

    Returns:
        The result, with `like`'s structure, dtypes and shapes.
    """
    import tensorflow as tf

    flat_like = keras.tree.flatten(like)
    handles = []
    for variable in variables:
        value = getattr(variable, "value", variable)
        handles.append(getattr(value, "handle", getattr(variable, "handle", None)))
    handles = [handle for handle in handles if handle is not None] + [_serializer().handle]
    count = len(inputs)

    def body(*arguments):
        result = function(*arguments[:count])
        # `tf.identity` reads a variable's value: a py_function may return tensors only.
        return [tf.identity(value) for value in keras.tree.flatten(result)]

    flat = tf.py_function(body, list(inputs) + handles, Tout=[value.dtype for value in flat_like])
    for value, reference in zip(flat, flat_like):
        value.set_shape(reference.shape)
    return keras.tree.pack_sequence_as(like, flat)
