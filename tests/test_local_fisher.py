import os

import keras
import numpy as np
import pytest
from tests.reference import damped
from tests.reference import eigh_roots
from tests.reference import relative_error

from keras_sngd import LocalFisher

STATE = (
    "second_moment",
    "mean",
    "statistics_weight",
    "inverse_root",
    "step",
    "refresh_count",
    "failed_refresh_count",
    "skipped_batch_count",
)


def state_of(layer):
    return {name: np.array(getattr(layer, name).numpy()) for name in STATE}


def expected_fisher(layer):
    """The damped G, in float64, from the layer's own moving statistics."""
    state = state_of(layer)
    second_moment = state["second_moment"].astype(np.float64) / float(state["statistics_weight"])
    if layer.center:
        mean = state["mean"].astype(np.float64) / float(state["statistics_weight"])
        second_moment = second_moment - np.outer(mean, mean)
    return damped(layer.activation_factor * second_moment, layer.damping)


def inverse_fisher_error(layer):
    """Relative error of `U U^T` against `G_d^-1` by float64 eigh (all Proposition 1 needs)."""
    inverse_root = layer.inverse_root.numpy().astype(np.float64)
    expected = eigh_roots(expected_fisher(layer))[1]
    return relative_error(inverse_root @ inverse_root.T, expected @ expected)


def random_inputs(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) + 0.5).astype("float32")


def test_identity_until_first_refresh():
    layer = LocalFisher(update_every=3)
    inputs = random_inputs((8, 5))
    for _ in range(2):
        np.testing.assert_array_equal(np.asarray(layer(inputs, training=True)), inputs)
    assert int(layer.refresh_count.numpy()) == 0 and int(layer.step.numpy()) == 2
    outputs = np.asarray(layer(inputs, training=True))
    assert int(layer.refresh_count.numpy()) == 1
    inverse_root = layer.inverse_root.numpy()
    assert not np.allclose(inverse_root, np.eye(5))
    # The refresh step already uses the new inverse root.
    np.testing.assert_allclose(outputs, inputs @ inverse_root, rtol=1e-5, atol=1e-5)


def test_inference_updates_nothing():
    layer = LocalFisher(update_every=1)
    inputs = random_inputs((8, 4))
    layer(inputs, training=True)
    before = state_of(layer)
    outputs = layer(random_inputs((8, 4), seed=1), training=False)
    layer(random_inputs((8, 4), seed=2))  # training=None means inference
    for name, value in state_of(layer).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    expected = random_inputs((8, 4), seed=1) @ before["inverse_root"]
    # (Relative to the outputs' scale: an element near 0 is a cancellation, whose rounding depends on the
    # matrix-product kernel, oneDNN's or Eigen's.)
    np.testing.assert_allclose(np.asarray(outputs), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("activation_factor", [1.0, 0.5])
def test_refresh_matches_eigh_of_moving_statistics(center, activation_factor):
    layer = LocalFisher(update_every=4, momentum=0.8, center=center, activation_factor=activation_factor)
    batches = [random_inputs((16, 6), seed=i) for i in range(4)]
    for batch in batches:
        layer(batch, training=True)
    # The moving statistics are the bias-corrected EMA of the batch moments...
    weights = 0.8 ** np.arange(3, -1, -1)
    expected_moment = sum(w * b.T.astype(np.float64) @ b / 16 for w, b in zip(weights, batches)) / weights.sum()
    state = state_of(layer)
    np.testing.assert_allclose(state["second_moment"] / state["statistics_weight"], expected_moment, rtol=1e-5)
    # ...and the refreshed inverse root is theirs, damped, to float32 accuracy.
    assert inverse_fisher_error(layer) < 1e-4
    assert int(state["refresh_count"]) == 1 and int(state["failed_refresh_count"]) == 0


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((8, 5), -1),  # before Dense
        ((4, 7, 5), -1),  # before an RNN: (batch, time, features)
        ((2, 6, 5), -1),  # before Conv1D
        ((2, 4, 4, 5), -1),  # before Conv2D, channels last
        ((2, 5, 4, 4), 1),  # before Conv2D, channels first
        ((2, 3, 3, 3, 5), -1),  # before Conv3D
    ],
)
def test_features_on_axis_statistics_over_the_rest(shape, axis):
    layer = LocalFisher(axis=axis, update_every=1, damping=1e-4)
    inputs = random_inputs(shape)
    outputs = np.asarray(layer(inputs, training=True))
    assert outputs.shape == shape == tuple(layer.compute_output_shape(shape))
    rows = np.moveaxis(inputs, axis, -1).reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(
        layer.second_moment.numpy() / layer.statistics_weight.numpy(), rows.T @ rows / len(rows), rtol=1e-5
    )
    inverse_root = layer.inverse_root.numpy()
    expected = np.moveaxis(np.moveaxis(inputs, axis, -1) @ inverse_root, -1, axis)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    # Whitened: the refreshed layer's outputs on this batch have second moment I (up to the small damping).
    whitened = np.moveaxis(outputs, axis, -1).reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(whitened.T @ whitened / len(whitened), np.eye(5), atol=1e-2)


def test_non_finite_batch_is_skipped_and_counted():
    layer = LocalFisher(update_every=2)
    layer(random_inputs((8, 3)), training=True)
    before = state_of(layer)
    bad = random_inputs((8, 3), seed=1)
    bad[0, 0] = np.nan
    layer(bad, training=True)  # a refresh step, from the statistics without the bad batch
    state = state_of(layer)
    assert int(state["skipped_batch_count"]) == 1 and int(state["step"]) == 2
    np.testing.assert_array_equal(state["second_moment"], before["second_moment"])
    assert int(state["refresh_count"]) == 1 and np.isfinite(state["inverse_root"]).all()
    assert inverse_fisher_error(layer) < 1e-4


def test_failed_refresh_keeps_previous_inverse_root():
    # One Newton-Schulz iteration cannot converge: every refresh is rejected and counted.
    layer = LocalFisher(update_every=1, iterations=1)
    for seed in range(3):
        layer(random_inputs((8, 4), seed=seed) * 10.0, training=True)
    np.testing.assert_array_equal(layer.inverse_root.numpy(), np.eye(4, dtype="float32"))
    assert int(layer.failed_refresh_count.numpy()) == 3 and int(layer.refresh_count.numpy()) == 0
    assert "3 failed" in layer.describe()


def test_float64_refresh():
    layer = LocalFisher(update_every=1, refresh_dtype="float64", damping=1e-6)
    layer(random_inputs((64, 8)), training=True)
    assert layer.inverse_root.dtype == "float32"
    assert inverse_fisher_error(layer) < 1e-6


def test_mixed_precision_keeps_float32_state():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input((6,)), LocalFisher(update_every=2), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(random_inputs((32, 6)), random_inputs((32, 3)), batch_size=8, epochs=1, verbose=0)
    layer = model.layers[0]
    assert all(getattr(layer, name).dtype in ("float32", "int32") for name in STATE)
    assert layer.compute_dtype == "float16"
    assert int(layer.refresh_count.numpy()) == 2
    assert model(random_inputs((2, 6))).dtype == "float16"
    assert inverse_fisher_error(layer) < 1e-3


def test_masking_passes_through():
    model = keras.Sequential(
        [keras.Input((5, 3)), keras.layers.Masking(0.0), LocalFisher(update_every=1), keras.layers.LSTM(2)]
    )
    inputs = random_inputs((4, 5, 3))
    inputs[:, 3:] = 0.0
    assert model(inputs).shape == (4, 2)
    assert model.layers[1].compute_mask(inputs, mask=np.ones((4, 5), bool)).shape == (4, 5)


def test_get_config_round_trip():
    layer = LocalFisher(
        axis=1, momentum=0.9, update_every=7, damping=1e-2, center=True, activation_factor=0.5,
        iterations=30, refresh_dtype="float64", refresh_tolerance=0.1, name="fisher",
    )
    config = layer.get_config()
    clone = LocalFisher.from_config(config)
    assert clone.get_config() == config
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).get_config() == config


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"axis": 1.0}, "axis"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"update_every": 0}, "update_every"),
        ({"update_every": 2.0}, "update_every"),
        ({"damping": -1e-3}, "damping"),
        ({"damping": float("inf")}, "damping"),
        ({"center": 1}, "center"),
        ({"activation_factor": 0.0}, "activation_factor"),
        ({"iterations": 0}, "iterations"),
        ({"refresh_dtype": "float16"}, "refresh_dtype"),
        ({"damping": True}, "damping"),
        ({"preserve_function": 1}, "preserve_function"),
        ({"refresh_tolerance": float("nan")}, "refresh_tolerance"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError) as error:
        LocalFisher(**kwargs)
    assert f"`{name}`" in str(error.value) and f"{name}={kwargs[name]!r}" in str(error.value)


def test_unknown_feature_size_or_bad_axis_raise():
    with pytest.raises(ValueError, match="known size"):
        LocalFisher().build((None, None))
    with pytest.raises(ValueError, match="axis"):
        LocalFisher(axis=3).build((None, 4))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_sequential_fit_with_sgd(jit_compile):
    model = keras.Sequential(
        [keras.Input((6,)), LocalFisher(update_every=2, refresh_tolerance=0.0), keras.layers.Dense(4, activation="relu"),
         LocalFisher(update_every=2, refresh_tolerance=0.0), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit_compile)
    assert model.jit_compile == jit_compile
    inputs, targets = random_inputs((64, 6)), random_inputs((64, 1), seed=1)
    history = model.fit(inputs, targets, batch_size=8, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    for layer in (model.layers[0], model.layers[2]):
        assert int(layer.step.numpy()) == 24 and int(layer.refresh_count.numpy()) == 12
        assert inverse_fisher_error(layer) < 1e-3
    # The 8 state variables (the batch-leverage scale, off by default, would add 2).
    assert model.layers[0].trainable_weights == [] and len(model.layers[0].non_trainable_weights) == 8


def test_save_load_is_bit_identical_and_continues_identically(tmp_path):
    def make():
        model = keras.Sequential(
            [keras.Input((6,)), LocalFisher(update_every=3, refresh_tolerance=0.0),
             keras.layers.Dense(8, activation="relu"), LocalFisher(update_every=3, center=True), keras.layers.Dense(2)]
        )
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
        return model

    inputs, targets = random_inputs((64, 6)), random_inputs((64, 2), seed=1)
    model = make()
    model.fit(inputs, targets, batch_size=16, epochs=2, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "sngd.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: LocalFisher is registered
    assert isinstance(loaded.layers[0], LocalFisher)
    for original, restored in zip(model.weights + model.optimizer.variables, loaded.weights + loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(original.numpy()), np.asarray(restored.numpy()), err_msg=original.path)
    # Continues exactly: same losses, step by step, through more refreshes.
    continued = model.fit(inputs, targets, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    resumed = loaded.fit(inputs, targets, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert continued == resumed
    assert int(loaded.layers[0].refresh_count.numpy()) == 6


def test_describe():
    layer = LocalFisher(update_every=2, name="lf")
    assert "not built" in layer.describe()
    layer(random_inputs((4, 3)), training=True)
    layer(random_inputs((4, 3)), training=True)
    assert layer.describe() == (
        "LocalFisher 'lf': 3 features on axis -1, step 2, 1 refreshes (0 failed; checked every 2 steps, "
        "refreshed above drift 0.3), "
        "0 non-finite batches skipped; refresh: replacing (no consumer layer in a model graph)"
    )
    # More effective features than rows: the scale and the rows are named.
    wide = LocalFisher(update_every=5, leverage_scaling=True, name="wide")
    for seed in range(5):
        wide(random_inputs((4, 16), seed), training=True)
    assert wide.describe().endswith("; batch-leverage scale %.3g (U divided by its root: more effective features "
                                    "than the 4 rows)" % float(wide.leverage.numpy()))
    assert float(wide.leverage.numpy()) > 1.0
    narrow = LocalFisher(update_every=1, leverage_scaling=True)
    narrow(random_inputs((8, 2)), training=True)
    assert narrow.describe().endswith("; batch-leverage scale 1")


def test_float64_refresh_on_jax_needs_x64_and_says_so_when_built():
    """On JAX without `jax_enable_x64` a float64 refresh is refused when the layer is built (before, the
    first due step of `fit` failed inside a conditional); with it, the refresh runs in float64."""
    import importlib.util
    import os

    from tests.test_backends import run_on

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    report = run_on("jax", os.path.join(os.path.dirname(__file__), "scripts", "jax_float64_check.py"))
    assert "refresh_dtype='float64'" in report["without_x64"] and "jax_enable_x64" in report["without_x64"]
    assert report["refreshes_with_x64"] == 1 and report["whitening_error"] < 1e-6
