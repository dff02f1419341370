"""KFAC as a Keras optimizer: configuration, save/load, the inverse schedule and what it refuses."""

import keras
import numpy as np
import pytest

from keras_sngd.optimizers import KFAC
from keras_sngd.optimizers import build_kfac_training
from keras_sngd.optimizers import check_kfac_model
from keras_sngd.optimizers import prepare_kfac
from keras_sngd.optimizers.kfac_layers import KFACLayerMixin
from tests.models import mlp
from tests.models import small_cnn


def data(shape, classes, count=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count,) + shape).astype("float32"), rng.integers(0, classes, count).astype("int32")


def compiled(model, **options):
    prepared = prepare_kfac(model)
    prepared.compile(KFAC(**{"learning_rate": 0.05, **options}), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return prepared


def test_prepare_keeps_outputs_and_replaces_dense_and_conv():
    model = small_cnn()
    inputs, _ = data((12, 12, 3), 4, count=8)
    prepared = prepare_kfac(model)
    np.testing.assert_allclose(prepared.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    kinds = [type(layer).__name__ for layer in prepared.layers if layer.weights]
    assert kinds == ["KFACConv2D", "BatchNormalization", "KFACConv2D", "KFACDense"]


def test_get_config_round_trip():
    optimizer = KFAC(learning_rate=0.2, momentum=0.5, damping=0.03, kl_clip=None, update_every=7, nesterov=True)
    config = optimizer.get_config()
    restored = KFAC.from_config(config)
    assert restored.get_config() == config
    assert (restored.damping, restored.kl_clip, restored.update_every, restored.nesterov) == (0.03, None, 7, True)
    serialized = keras.optimizers.serialize(optimizer)
    assert isinstance(keras.optimizers.deserialize(serialized), KFAC)


def test_save_load_round_trip_continues_identically(tmp_path):
    inputs, labels = data((12,), 3)
    model = compiled(mlp(), update_every=3)
    model.fit(inputs, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "kfac.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, KFAC)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)
    # Two more steps (one refresh of the inverses among them) from the saved state: same weights.
    model.fit(inputs[:32], labels[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(inputs[:32], labels[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert loaded.optimizer.preconditioned_layers == model.optimizer.preconditioned_layers
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_inverses_refresh_every_update_every_steps():
    inputs, labels = data((12,), 3, count=16)
    model = compiled(mlp(), update_every=3)
    inverse = None
    changed = []
    for step in range(7):
        model.train_on_batch(inputs, labels)
        current = np.asarray(model.optimizer.variables[-1]).copy()
        changed.append(inverse is None or not np.array_equal(current, inverse))
        inverse = current
    assert changed == [True, False, False, True, False, False, True]


def test_build_kfac_training_returns_prepared_model_and_optimizer():
    model, optimizer = build_kfac_training(mlp(), 0.3)
    assert isinstance(optimizer, KFAC)
    assert float(optimizer.learning_rate) == pytest.approx(0.3)
    assert any(isinstance(layer, KFACLayerMixin) for layer in model.layers)
    with pytest.raises(ValueError, match="learning_rate"):
        build_kfac_training(mlp(), 0.0)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"damping": 0.0}, "damping"),
        ({"kl_clip": -1.0}, "kl_clip"),
        ({"update_every": 0}, "update_every"),
        ({"nesterov": 1}, "nesterov"),
        ({"loss_scale_factor": 128.0}, "loss_scale_factor"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
    ],
)
def test_invalid_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        KFAC(**options)


def test_factor_decay_is_checked():
    with pytest.raises(ValueError, match="factor_decay"):
        prepare_kfac(mlp(), factor_decay=1.0)


def test_model_without_kfac_layers_is_refused():
    model = mlp()
    model.compile(KFAC(0.1), "sparse_categorical_crossentropy")
    inputs, labels = data((12,), 3, count=8)
    with pytest.raises(ValueError, match="prepare_kfac"):
        model.train_on_batch(inputs, labels)


def test_float16_mixed_precision_is_refused():
    keras.config.set_dtype_policy("mixed_float16")
    with pytest.raises(ValueError, match="float16"):
        prepare_kfac(mlp())


def test_channels_first_conv_is_refused():
    inputs = keras.Input((2, 6, 6))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 3, data_format="channels_first")(inputs))
    with pytest.raises(ValueError, match="channels_last"):
        prepare_kfac(model)


def test_check_kfac_model():
    model = compiled(mlp())
    assert check_kfac_model(model) is model
    summed = prepare_kfac(mlp())
    summed.compile(KFAC(0.1), keras.losses.SparseCategoricalCrossentropy(reduction="sum"))
    with pytest.raises(ValueError, match="sum_over_batch_size"):
        check_kfac_model(summed)
    plain = mlp()
    plain.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="not compiled with KFAC"):
        check_kfac_model(plain)


def test_mixed_bfloat16_trains():
    # bfloat16 needs no loss scaling; the factors and the preconditioning are computed in float32.
    keras.config.set_dtype_policy("mixed_bfloat16")
    inputs, labels = data((12,), 3)
    model = compiled(mlp())
    history = model.fit(inputs, labels, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.layers[0].input_factor.dtype == "float32"


def test_shared_layer_is_refused():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4)
    model = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match="no shared layers"):
        prepare_kfac(model)


def test_layers_with_factors_wider_than_max_features_stay_plain():
    # small_cnn: conv 3x3x3 -> 8 (A: 28 with the bias), conv 3x3x8 -> 8 (A: 73), Dense 8 -> 4 (A: 9); a limit
    # of 30 leaves the second convolution plain, and it still trains (the plain SGD step).
    model = small_cnn()
    sizes = {layer.name: layer.kernel.shape for layer in model.layers if hasattr(layer, "kernel")}
    prepared = prepare_kfac(model, max_features=30)
    kinds = [type(layer).__name__ for layer in prepared.layers if layer.weights]
    assert kinds == ["KFACConv2D", "BatchNormalization", "Conv2D", "KFACDense"], sizes
    inputs, labels = data((12, 12, 3), 4, count=16)
    np.testing.assert_allclose(prepared.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)
    prepared.compile(KFAC(learning_rate=0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain = prepared.layers[[type(layer).__name__ for layer in prepared.layers].index("Conv2D")]
    before = np.array(plain.kernel)
    losses = prepared.fit(inputs, labels, epochs=2, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert not np.allclose(np.array(plain.kernel), before)
    with pytest.raises(ValueError, match="max_features=2"):
        prepare_kfac(model, max_features=2)
    with pytest.raises(ValueError, match="max_features"):
        prepare_kfac(model, max_features=0)
