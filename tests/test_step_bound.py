"""The trust region of the layers SNGD cannot whiten: `reconstruct` puts a `StepBound` before depthwise,
separable and grouped convolutions (`keras_sngd.step_bound`; `scripts/step_bound_check.py` on every
backend, in subprocesses)."""

import os

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import FisherStatistics
from keras_sngd import StepBound
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "step_bound_check.py")
L = keras.layers


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_steps_of_unwhitenable_layers_are_bounded(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    assert report["step_bounds"] == ["depthwise_step_bound", "grouped_step_bound", "separable_step_bound"]
    assert report["max_steps"] == [0.05]
    assert "StepBound 'depthwise_step_bound' bounds its steps" in report["skipped"]["depthwise"]
    assert report["same_at_start"] == 0.0
    for name in ("depthwise", "separable", "grouped"):
        # Plain SGD at this rate takes far larger steps (or diverges); with the bound every step is at most
        # max_step of the layer's size, and the largest is at it: the bound acted.
        assert not report["plain_largest"][name] <= 0.06, report
        assert 0.049 < report["largest"][name] <= 0.05 * (1 + 1e-5), report
        assert 0.049 < report["loaded_largest"][name] <= 0.05 * (1 + 1e-5), report
    # A layer shared by two call sites: one StepBound, handing its weights over once per step.
    assert report["shared_bounds"] == 1 and 0.049 < report["shared_largest"] <= 0.05 * (1 + 1e-5), report
    assert report["fold_error"] < 1e-5 and "StepBound" not in report["folded_types"]
    assert report["load_error"] < 1e-6


def _model():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(x)))


def _bounds(model):
    return [layer.name for layer in model.layers if isinstance(layer, StepBound)]


def test_when_reconstruct_inserts_a_step_bound():
    model = _model()
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert _bounds(sngd) == ["depthwise_step_bound"]
    # Reconstructing again inserts nothing new.
    again, report = keras_sngd.reconstruct(sngd, return_report=True)
    assert _bounds(again) == ["depthwise_step_bound"] and report.inserted == []
    # No trust region, the user's exclusion, a restriction to some layer types, a frozen layer, the NGD
    # baseline's statistics layers: no StepBound.
    assert _bounds(keras_sngd.reconstruct(model, local_fisher_arguments={"max_step": None})) == []
    assert _bounds(keras_sngd.reconstruct(model, per_layer_arguments={"depthwise": {"max_step": None}})) == []
    assert _bounds(keras_sngd.reconstruct(model, exclude=["depthwise"])) == []
    assert _bounds(keras_sngd.reconstruct(model, layer_types=(L.Conv2D,))) == []
    assert _bounds(keras_sngd.reconstruct(model, layer_class=FisherStatistics)) == []
    model.get_layer("depthwise").trainable = False
    assert _bounds(keras_sngd.reconstruct(model)) == []
    # Its radius follows the LocalFishers'.
    model.get_layer("depthwise").trainable = True
    bounded = keras_sngd.reconstruct(model, local_fisher_arguments={"max_step": 0.02})
    assert bounded.get_layer("depthwise_step_bound").max_step == 0.02


def test_step_bound_arguments_and_accumulation_are_checked():
    with pytest.raises(ValueError, match="max_step"):
        StepBound(max_step=0.0)
    sngd = keras_sngd.reconstruct(_model())
    sngd.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), "mse")
    data = np.zeros((4, 6, 6, 2), "float32"), np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        sngd.fit(*data, batch_size=2, epochs=1, verbose=0)


def test_no_step_bound_before_a_layer_that_feeds_a_normalization_layer():
    # Normalization makes the layer's output independent of its weights' scale: its steps do not compound.
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.BatchNormalization(name="norm")(L.DepthwiseConv2D(3, padding="same", activation="relu", name="normalized")(x))
    x = L.DepthwiseConv2D(3, padding="same", name="raw")(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(x)))
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert _bounds(sngd) == ["raw_step_bound"]
    skipped = {entry[0]: entry[2] for entry in report.skipped}
    assert "StepBound" not in skipped["normalized"] and "StepBound 'raw_step_bound'" in skipped["raw"]


def test_step_bound_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((8, 8, 4))
        x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(L.Conv2D(8, 3, padding="same")(inputs))
        model = keras.Model(inputs, L.Dense(3, dtype="float32")(L.GlobalAveragePooling2D()(x)))
        sngd = keras_sngd.reconstruct(model)
    finally:
        keras.config.set_dtype_policy("float32")
    sngd.compile(keras.optimizers.SGD(30.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(16, 8, 8, 4)).astype("float32"), rng.integers(0, 3, 16)
    weights = sngd.get_layer("depthwise").trainable_weights
    for _ in range(3):
        before = [keras.ops.convert_to_numpy(w).copy() for w in weights]
        sngd.train_on_batch(features, labels)
        step = np.sqrt(sum(np.sum((keras.ops.convert_to_numpy(w) - b) ** 2) for w, b in zip(weights, before)))
        assert step / np.sqrt(sum(np.sum(b ** 2) for b in before)) <= 0.05 * (1 + 1e-3)


def test_hand_inserted_step_bound_warns_until_prepared_then_bounds():
    model = keras.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(4, 3, padding="same"), StepBound(max_step=0.05, name="bound"),
        L.DepthwiseConv2D(3, padding="same", name="depthwise"), L.Flatten(), L.Dense(2),
    ])
    data = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32"), np.zeros((8, 2), "float32")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.warns(UserWarning, match="StepBound 'bound' bounds nothing"):
        model.train_on_batch(*data)
    model.get_layer("bound").prepare()
    model.compile(keras.optimizers.SGD(100.0), "mse")
    weights = model.get_layer("depthwise").trainable_weights
    before = [keras.ops.convert_to_numpy(w).copy() for w in weights]
    model.train_on_batch(*data)
    step = np.sqrt(sum(np.sum((keras.ops.convert_to_numpy(w) - b) ** 2) for w, b in zip(weights, before)))
    assert step / np.sqrt(sum(np.sum(b ** 2) for b in before)) <= 0.05 * (1 + 1e-4)
