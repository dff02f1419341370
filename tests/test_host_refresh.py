"""`keras_sngd.host_refresh`: on TensorFlow the drift check and the refresh run on the host when due, with
the numbers of the refresh traced into the step's graph, and the step's graph holds no refresh."""

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import fisher_layer
from keras_sngd import host_refresh

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the host refresh is TensorFlow's (JAX hands off, PyTorch runs eagerly)")


def fishers(model):
    return [layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)]


def data(features=300, rows=160, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, features)) * np.linspace(0.1, 3.0, features)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int32") + (x[:, 3] > 1).astype("int32")
    return x, y


def trained(host, center=False, features=300, steps=20, learning_rate=0.1, jit_compile="auto"):
    """A reconstructed MLP (`reconstruct`'s defaults: the low-rank U on the wide input, the batch-leverage
    scale, the trust region) after `steps` steps of SGD, with the refresh on the host or in the graph."""
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((features,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(3)])
    arguments = {"update_every": 4, "refresh_tolerance": 0.05}
    if center:
        arguments["center"] = True
    model = keras_sngd.reconstruct(plain, local_fisher_arguments=arguments)
    for layer in fishers(model):
        layer._host_refresh = host
    model.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    x, y = data(features, rows=8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize("center", [False, True])
def test_the_host_refresh_gives_the_numbers_of_the_refresh_in_the_graph(center):
    on_host, in_graph = trained(True, center), trained(False, center)
    counts = [(int(layer.refresh_count.numpy()), int(layer.failed_refresh_count.numpy())) for layer in fishers(on_host)]
    assert counts == [(int(layer.refresh_count.numpy()), int(layer.failed_refresh_count.numpy()))
                      for layer in fishers(in_graph)]
    # Refreshed more than once each (the first refresh and drifted ones), none failed.
    assert all(accepted >= 2 and failed == 0 for accepted, failed in counts), counts
    assert fishers(on_host)[0]._low_rank()  # the 300-wide input's low-rank U took part
    for got, want in zip(on_host.weights, in_graph.weights, strict=True):
        np.testing.assert_allclose(np.asarray(got.numpy(), "float64"), np.asarray(want.numpy(), "float64"),
                                   rtol=1e-5, atol=1e-6, err_msg=got.path)


def test_the_refresh_keeps_the_function_on_the_host():
    """With a learning rate of 0 only the refreshes change the weights: the consumers' kernels are
    re-expressed in the step that refreshes, before the forward pass reads them."""
    x, _ = data()
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((300,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    expected = np.asarray(plain(x[:32]))
    model = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2, "refresh_tolerance": 0.0})
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(x, np.zeros((len(x), 3), "float32"), batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert all(int(layer.refresh_count.numpy()) >= 5 for layer in fishers(model))
    np.testing.assert_allclose(np.asarray(model(x[:32])), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # Every step's loss is the plain model's: each refresh step's forward pass used the re-expressed kernel.
    plain.compile(keras.optimizers.SGD(0.0), "mse")
    plain_history = plain.fit(x, np.zeros((len(x), 3), "float32"), batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(history.history["loss"], plain_history.history["loss"], rtol=1e-5)


def test_the_step_graph_holds_no_refresh_and_the_refresh_is_traced_when_first_due():
    import tensorflow as tf

    width = 13  # a width no other test uses: its refresh is traced here or not at all
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(3)])
    model = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 5})
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    specs = (tf.TensorSpec((8, width), "float32"), tf.TensorSpec((8,), "int32"))
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    names = [function.signature.name for function in graph.as_graph_def().library.function]
    assert not any("warm_refresh" in name or "whitening_drift" in name for name in names), names
    operations = [operation.type for operation in graph.get_operations()]
    for function in graph.as_graph_def().library.function:
        operations.extend(node.op for node in function.node_def)
    assert operations.count("EagerPyFunc") == 2  # one per LocalFisher, in its checking branch

    def traced_for_width():
        return [key for key in fisher_layer._warm_refresh.functions if f"({width}, {width})" in str(key)]

    x, y = data(width, rows=32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # steps 1 to 4: no refresh due yet
    assert not traced_for_width()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # step 5: both refresh
    assert all(int(layer.refresh_count.numpy()) == 1 for layer in fishers(model))
    assert traced_for_width()


def test_under_xla_the_refresh_stays_in_the_graph_and_agrees():
    """XLA cannot call back into Python: a step compiled with `jit_compile=True` traces the refresh in, with
    the same numbers as on the host."""
    compiled, on_host = trained(True, jit_compile=True, steps=12), trained(True, steps=12)
    counts = [int(layer.refresh_count.numpy()) for layer in fishers(compiled)]
    assert counts == [int(layer.refresh_count.numpy()) for layer in fishers(on_host)] and min(counts) >= 2
    # The same function (XLA's products round differently, and a low-rank basis is defined up to signs
    # and rotations, so the weights themselves are compared through the model's outputs).
    probe, _ = data(seed=5, rows=32)
    expected = np.asarray(on_host(probe))
    np.testing.assert_allclose(np.asarray(compiled(probe)), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_available_only_in_a_graph_without_xla():
    import tensorflow as tf

    assert not host_refresh.available()  # eager
    seen = {}

    @tf.function
    def graph():
        seen["graph"] = host_refresh.available()
        return tf.constant(0.0)

    @tf.function(jit_compile=True)
    def xla():
        seen["xla"] = host_refresh.available()
        return tf.constant(0.0)

    graph()
    xla()
    assert seen == {"graph": True, "xla": False}
