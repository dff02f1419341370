"""`reconstruct(max_features=...)`: layers whose input is too wide for a `(d, d)` LocalFisher stay plain,
bounded by a StepBound, and say so (keras_sngd.width)."""

import warnings

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd import width
from keras_sngd.step_bound import StepBound


def _flatten_head(features=(6, 6, 4), name="fc1"):
    inputs = keras.Input(features)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)  # 4 * 4 * 8 = 128 features
    x = keras.layers.Dense(16, activation="relu", name=name)(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs)


def _data(count=32):
    rng = np.random.default_rng(0)
    return rng.random((count, 6, 6, 4), dtype="float32"), rng.integers(0, 3, count)


def _skipped(report):
    return {path: reason for path, _, reason in report.skipped}


def test_a_wide_layer_stays_plain_with_a_step_bound_and_the_reason(tmp_path):
    model = _flatten_head()
    sngd, report = keras_sngd.reconstruct(model, return_report=True, max_features=64)
    inserted = {path for path, *_ in report.inserted}
    assert inserted == {"conv", "out"}
    reason = _skipped(report)["fc1"]
    assert "128 input features, more than max_features=64" in reason
    assert "max_features=None" in reason and "per_layer_arguments={'fc1': {}}" in reason
    assert "StepBound 'fc1_step_bound'" in reason
    bound = sngd.get_layer("fc1_step_bound")
    assert isinstance(bound, StepBound)
    x, y = _data()
    np.testing.assert_allclose(sngd.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    # Its steps are bounded: at a huge rate each step of fc1 is at most max_step times its weights' norm.
    sngd.compile(keras.optimizers.SGD(100.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert 0 < _relative_steps(sngd, ["fc1"], x, y)["fc1"] <= bound.max_step * (1 + 1e-4)

    path = tmp_path / "wide.keras"
    sngd.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), sngd.predict(x, verbose=0), atol=1e-6)
    assert isinstance(loaded.get_layer("fc1_step_bound"), StepBound)

    folded = keras_sngd.fold(sngd)
    assert not any(isinstance(layer, (StepBound, keras_sngd.LocalFisher)) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict(x, verbose=0), sngd.predict(x, verbose=0), atol=1e-5)


def test_reconstructing_again_adds_nothing_and_keeps_the_reason():
    once = keras_sngd.reconstruct(_flatten_head(), max_features=64)
    twice, report = keras_sngd.reconstruct(once, return_report=True, max_features=64)
    assert not report.inserted
    assert "more than max_features=64" in _skipped(report)["fc1"]  # not "has a constraint": the StepBound's own
    assert sum(isinstance(layer, StepBound) for layer in twice.layers) == 1


def test_naming_the_layer_or_no_limit_whitens_it():
    model = _flatten_head()
    for arguments in ({"max_features": 64, "per_layer_arguments": {"fc1": {}}}, {"max_features": None}):
        sngd, report = keras_sngd.reconstruct(model, return_report=True, **arguments)
        assert {path for path, *_ in report.inserted} == {"conv", "fc1", "out"}
        assert not report.skipped
        assert sngd.get_layer("fc1_local_fisher").inverse_root.shape == (128, 128)


def test_the_default_limit_leaves_a_wider_dense_plain_without_building_its_state():
    # 8193 features: over `width.MAX_FEATURES`; nothing of size d^2 is created.
    inputs = keras.Input((width.MAX_FEATURES + 1,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Dense(4, name="wide")(inputs)))
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert f"more than max_features={width.MAX_FEATURES}" in _skipped(report)["wide"]
    assert "537.0 MB" in _skipped(report)["wide"]
    assert [path for path, *_ in report.inserted] == ["head"]
    assert max(int(np.prod(weight.shape)) for weight in sngd.weights) < 2 * (width.MAX_FEATURES + 1) * 4


def test_recurrent_state_and_attention_inputs_over_the_limit_are_skipped_without_a_step_bound_before_them():
    inputs = keras.Input((5, 4))
    x = keras.layers.LSTM(16, return_sequences=True, name="lstm")(inputs)
    x = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    outputs = keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    sngd, report = keras_sngd.reconstruct(model, return_report=True, max_features=8)
    skipped = _skipped(report)
    assert "16 input features, more than max_features=8" in skipped["lstm/state"]
    assert "more than max_features=8" in skipped["attention"]
    assert "StepBound" not in skipped["attention"]
    inserted = {path for path, *_ in report.inserted}
    assert "lstm" in inserted  # its input has 4 features
    assert "2.0 kB" in skipped["lstm/state"]  # two 16 x 16 float32 matrices
    # The Dense head reads the attention's 16 features too: plain, with the one StepBound.
    assert "StepBound 'out_step_bound'" in skipped["out"]
    assert [layer.name for layer in sngd.layers if isinstance(layer, StepBound)] == ["out_step_bound"]
    x = np.random.default_rng(0).random((8, 5, 4), dtype="float32")
    np.testing.assert_allclose(sngd.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8192", True])
def test_bad_max_features(bad):
    with pytest.raises(ValueError, match="max_features"):
        keras_sngd.reconstruct(_flatten_head(), max_features=bad)


def test_a_hand_built_local_fisher_on_a_wide_input_warns(monkeypatch):
    monkeypatch.setattr(width, "MAX_FEATURES", 16)
    with pytest.warns(UserWarning, match="built on 32 features"):
        keras_sngd.LocalFisher(name="wide_fisher").build((None, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_sngd.LocalFisher().build((None, 16))


def _relative_steps(model, names, x, y):
    """Each named layer's joint step over its own trainable weights (no carriers) in one step, relative to
    their norm."""
    from keras_sngd.handoff import without_carriers

    weights = {name: without_carriers(model.get_layer(name).trainable_weights) for name in names}
    before = {name: [np.array(w) for w in ws] for name, ws in weights.items()}
    model.train_on_batch(x, y)
    steps = {}
    for name, ws in weights.items():
        change = np.sqrt(sum(np.sum((np.array(w) - b) ** 2) for w, b in zip(ws, before[name])))
        steps[name] = change / np.sqrt(sum(np.sum(b ** 2) for b in before[name]))
    return steps


def test_wrappers_and_convolutions_over_the_limit_are_bounded_and_recurrent_layers_keep_their_state_bound():
    inputs = keras.Input((5, 12))
    a = keras.layers.TimeDistributed(keras.layers.Dense(6), name="td")(inputs)
    b = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bi")(inputs)
    c = keras.layers.Conv1D(5, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Concatenate()([a, b, c])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling1D()(x)))
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 5, 12), dtype="float32"), rng.random((32, 2), dtype="float32")

    sngd, report = keras_sngd.reconstruct(model, return_report=True, max_features=10)
    skipped = _skipped(report)
    for name in ("td", "conv", "out"):
        assert f"StepBound '{name}_step_bound'" in skipped[name]
    # The Bidirectional LSTM's state (4 features) is whitened, and that LocalFisher's trust region bounds the
    # recurrent kernels; a StepBound over the same weights would undo it, so there is none.
    assert "more than max_features=10" in skipped["bi"] and "StepBound" not in skipped["bi"]
    assert {"bi/state forward", "bi/state backward"} <= {path for path, *_ in report.inserted}
    np.testing.assert_allclose(sngd.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    sngd.compile(keras.optimizers.SGD(50.0), "mse")
    steps = _relative_steps(sngd, ["td", "conv"], x, y)
    for name, step in steps.items():
        assert 0 < step <= 0.05 * (1 + 1e-4), (name, step)
    lstm = sngd.get_layer("bi")
    recurrent = [w for w in lstm.trainable_weights if "recurrent_kernel" in w.path]
    before = [np.array(w) for w in recurrent]
    sngd.train_on_batch(x, y)
    for w, b in zip(recurrent, before):
        assert np.linalg.norm(np.array(w) - b) <= 0.05 * np.linalg.norm(b) * (1 + 1e-4)

    # Without the state's LocalFisher the Bidirectional layer gets the StepBound.
    plain_state, report = keras_sngd.reconstruct(model, return_report=True, max_features=10, recurrent_state=False)
    assert "StepBound 'bi_step_bound'" in _skipped(report)["bi"]
    plain_state.compile(keras.optimizers.SGD(50.0), "mse")
    assert 0 < _relative_steps(plain_state, ["bi"], x, y)["bi"] <= 0.05 * (1 + 1e-4)
