"""Input generators and comparisons shared by the reconstruct/fold tests."""

import keras
import numpy as np

from keras_sngd import LocalFisher
from keras_sngd.graph import walk_layers


def sample_inputs(model, batch=8, seed=0):
    """Random float32 inputs for every input of `model` (a list if it has several), mean 0.3, scale 0.5."""
    rng = np.random.default_rng(seed)
    arrays = [(rng.standard_normal((batch,) + tuple(t.shape[1:])) * 0.5 + 0.3).astype("float32") for t in model.inputs]
    return arrays if len(arrays) > 1 else arrays[0]


def as_list(outputs):
    """A model's outputs as a list of NumPy arrays."""
    return [keras.ops.convert_to_numpy(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def assert_outputs_close(a, b, rtol=1e-4):
    """Each output of `a` equals that of `b` within `rtol`, relative to the largest value of `b`'s output."""
    for x, y in zip(as_list(a), as_list(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, np.abs(y).max()))


def local_fishers(model):
    """Every LocalFisher (and FisherStatistics) in `model`, nested models included."""
    return [layer for _, layer in walk_layers(model) if isinstance(layer, LocalFisher)]


def train_a_few_steps(model, steps=4, seed=1, learning_rate=0.01, batch=16):
    """`steps` SGD steps on one random batch towards zero targets (mean squared error)."""
    inputs = sample_inputs(model, batch=batch, seed=seed)
    targets = [np.zeros(o.shape, "float32") for o in as_list(model(inputs))]
    model.compile(keras.optimizers.SGD(learning_rate), ["mse"] * len(targets) if len(targets) > 1 else "mse")
    for _ in range(steps):
        model.train_on_batch(inputs, targets if len(targets) > 1 else targets[0])


def channels_first_convolutions_run():
    """Whether this backend runs a plain `Conv2D(data_format="channels_first")` here. TensorFlow's CPU
    kernels run NCHW convolutions only when built with oneDNN on a processor it uses (AVX-512); elsewhere the
    plain layer itself fails with "The Conv2D op currently only supports the NHWC tensor format on the
    CPU", eagerly and in a graph, so there is no function for SNGD to keep."""
    try:
        layer = keras.layers.Conv2D(1, 1, data_format="channels_first")
        keras.ops.convert_to_numpy(layer(np.zeros((1, 2, 3, 3), "float32")))
    except Exception as error:  # noqa: BLE001 - the backend's own error type (tf.errors.UnimplementedError)
        if "NHWC" in str(error) or "NCHW" in str(error):
            return False
        raise
    return True


CHANNELS_FIRST_UNSUPPORTED = ("this TensorFlow build cannot run a plain channels_first Conv2D on this CPU "
                              "(no oneDNN: 'only supports the NHWC tensor format on the CPU'); the JAX "
                              "backend runs the same case")
