"""`keras_sngd.compiled.shared`: one compiled refresh per shape, called (not inlined) from the train step."""

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd.compiled import shared
from keras_sngd.refresh import warm_refresh
from tests.reference import spd_matrix

TENSORFLOW = keras.backend.backend() == "tensorflow"


def test_shared_gives_the_function_s_results():
    fisher = spd_matrix(12, 1e3, seed=0).astype("float32")
    old = np.eye(12, dtype="float32")
    expected = warm_refresh(fisher, old, 0.01)
    result = shared(warm_refresh)(fisher, old, 0.01)
    assert type(result) is type(expected)
    for got, want in zip(result, expected):
        want = keras.ops.convert_to_numpy(want)
        # (Relative to the largest entry: the compiled graph's products and the eager ones round apart,
        # by up to 1e-6 of the largest entry with Eigen's kernels, on a CPU without oneDNN.)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-5,
                                   atol=2e-6 * max(1.0, float(np.abs(want).max(initial=0.0))))


def test_shared_is_the_identity_on_numpy(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    assert shared(warm_refresh) is warm_refresh


def test_shared_traces_full_float32_products_on_jax(monkeypatch):
    """On JAX the refresh's products carry Precision.HIGHEST (not TensorFloat-32 on GPUs), only inside it."""
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    import jax.numpy as jnp

    def products(a, b):
        return jnp.matmul(a, b)

    matrix = np.eye(4, dtype="float32")
    inside = str(jax.make_jaxpr(shared(products))(matrix, matrix))
    outside = str(jax.make_jaxpr(products)(matrix, matrix))
    assert "HIGHEST" in inside
    assert "HIGHEST" not in outside


def test_shared_compiles_once_per_signature_outside_a_jax_trace(monkeypatch):
    """On JAX, called with concrete arrays (a refresh between steps), the function runs as one `jax.jit`
    program per signature: array shapes and dtypes, and the values of the Python arguments."""
    jax = pytest.importorskip("jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    import jax.numpy as jnp

    traces = []

    def scaled_products(a, b, scale, pair=(None, None)):
        traces.append(scale)
        return scale * jnp.matmul(a, b), (pair[0], jnp.sum(a))

    compiled = shared(scaled_products)
    first = np.arange(16, dtype="float32").reshape(4, 4)
    second = np.ones((4, 4), "float32")
    product, (none, total) = compiled(first, second, 2.0)
    np.testing.assert_allclose(np.asarray(product), 2.0 * first @ second, rtol=1e-6)
    assert none is None and float(total) == float(first.sum())
    compiled(second, first, 2.0)  # same signature: the same program, not traced again
    compiled(jnp.asarray(first), jnp.asarray(second), 2.0)
    assert len(compiled.programs) == 1 and traces == [2.0]
    compiled(first, second, 3.0)  # another Python value: another program
    compiled(np.ones((3, 3), "float32"), np.ones((3, 3), "float32"), 3.0)  # another shape: traced again
    assert len(compiled.programs) == 2 and traces == [2.0, 3.0, 3.0]
    compiled(first, second, 2.0, pair=(None, first))  # another structure
    assert len(compiled.programs) == 3
    # Under a trace (the train step) it is inlined with full float32 products, and compiles nothing.
    jaxpr = str(jax.make_jaxpr(lambda a: compiled(a, a, 2.0)[0])(first))
    assert "HIGHEST" in jaxpr and len(compiled.programs) == 3


def test_shared_runs_full_float32_products_on_torch_and_restores_the_setting(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    seen = []
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        shared(lambda: seen.append(torch.get_float32_matmul_precision()))()
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "high"

        def failing():
            raise RuntimeError("refresh failed")

        with pytest.raises(RuntimeError):
            shared(failing)()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.skipif(not TENSORFLOW, reason="the compiled, shared refresh is TensorFlow's")
def test_layers_of_one_width_call_one_traced_refresh():
    import tensorflow as tf

    def count(function):
        library = function.graph.as_graph_def().library.function
        return sum("warm_refresh" in entry.signature.name for entry in library)

    compiled = shared(warm_refresh)
    fisher = tf.constant(spd_matrix(6, 10.0, seed=1).astype("float32"))

    @tf.function
    def two_calls(first, second):
        return compiled(first, tf.eye(6), 0.01).inverse_root + compiled(second, tf.eye(6), 0.01).inverse_root

    traced = two_calls.get_concrete_function(fisher, fisher)
    operations = [op.type for op in traced.graph.get_operations()]
    # Called twice, traced once, and not inlined: two call operations of one function in the library.
    assert operations.count("PartitionedCall") + operations.count("StatefulPartitionedCall") == 2
    assert count(traced) == 1
    assert compiled.experimental_get_tracing_count() == 1
    # Another width is another trace.
    other = tf.constant(spd_matrix(4, 10.0, seed=2).astype("float32"))
    compiled(other, tf.eye(4), 0.01)
    assert compiled.experimental_get_tracing_count() == 2


@pytest.mark.skipif(not TENSORFLOW, reason="the compiled, shared refresh is TensorFlow's")
def test_the_train_step_calls_the_shared_refresh_and_refreshes():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(6, activation="relu"), keras.layers.Dense(2)])
    model = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2})
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    fishers = [layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)]
    assert [int(layer.refresh_count.numpy()) >= 1 for layer in fishers] == [True] * 3
    assert all(int(layer.failed_refresh_count.numpy()) == 0 for layer in fishers)
    # The three 6-wide layers' refreshes are two functions in the traced step's library, not three copies:
    # one for the layer on the raw input (damping 1.0, `fixed_feature_damping`), one for the two others.
    assert sorted(layer.damping for layer in fishers) == [0.01, 0.01, 1.0]
    specs = (tf.TensorSpec((8, 6), "float32"), tf.TensorSpec((8,), "int32"))
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    names = [function.signature.name for function in graph.as_graph_def().library.function]
    assert sum("warm_refresh" in name for name in names) == 2
    assert sum("whitening_drift" in name for name in names) == 2


def _fake_tensorflow_gpu(monkeypatch, tensor_float_32):
    import tensorflow as tf

    from keras_sngd import compiled

    monkeypatch.setattr(compiled, "_TENSOR_FLOAT_32_WARNED", [])
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["/GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "tensor_float_32_execution_enabled", lambda: tensor_float_32)
    return compiled


def test_tensorflow_with_tensor_float_32_on_a_gpu_warns_once_and_names_the_fixes(monkeypatch):
    pytest.importorskip("tensorflow")
    compiled = _fake_tensorflow_gpu(monkeypatch, tensor_float_32=True)
    with pytest.warns(UserWarning, match="TensorFloat-32") as record:
        keras_sngd.LocalFisher(name="lf").build((None, 6))
    message = str(record[0].message)
    assert "enable_tensor_float_32_execution(False)" in message and "refresh_dtype='float64'" in message
    assert "'lf'" in message
    # Once per process; not for a float64 refresh.
    assert not compiled.warn_if_tensor_float_32("other", "float32")
    monkeypatch.setattr(compiled, "_TENSOR_FLOAT_32_WARNED", [])
    assert not compiled.warn_if_tensor_float_32("other", "float64")


def test_no_tensor_float_32_warning_without_it(monkeypatch):
    pytest.importorskip("tensorflow")
    compiled = _fake_tensorflow_gpu(monkeypatch, tensor_float_32=False)
    assert not compiled.warn_if_tensor_float_32("lf", "float32")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")  # JAX: the refresh is full float32 by itself
    assert not compiled.warn_if_tensor_float_32("lf", "float32")
