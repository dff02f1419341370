"""Models with Keras-quantized layers (`model.quantize(mode)`): `reconstruct` leaves the quantized layers
plain (their kernels cannot be re-expressed) and says so, copies every variable of theirs to the clone
by name, and the reconstruction and `fold` compute what the model computes.

A float8 Dense or EinsumDense holds `kernel, bias` and then six scale and amax-history variables; rebuilt
from its config it creates the six first. Copying by position crashed `reconstruct` (a shape mismatch),
and where shapes agree (the three scalar scales, the three histories) it would have swapped them.
"""

import keras
import numpy as np
import pytest

import keras_sngd


def quantized_model(mode, quantize_all):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu", name="first")(inputs)
    hidden = keras.layers.EinsumDense("ab,bc->ac", output_shape=16, bias_axes="c", name="einsum")(hidden)
    outputs = keras.layers.Dense(4, name="head")(hidden)
    model = keras.Model(inputs, outputs)
    if quantize_all:
        model.quantize(mode)
    else:
        model.get_layer("first").quantize(mode)
    return model


def distinct_values(layer):
    """Give every non-kernel variable of `layer` a value of its own, so that a swap shows."""
    for index, variable in enumerate(layer.weights):
        if variable.dtype.startswith("float") and variable.path.split("/")[-1] not in ("kernel", "bias"):
            variable.assign(np.full(variable.shape, 0.5 + 0.25 * index, variable.dtype))


def assert_same_variables_by_name(original, clone):
    paths = {variable.path.split("/", 1)[1]: variable for variable in original.weights}
    assert sorted(paths) == sorted(variable.path.split("/", 1)[1] for variable in clone.weights)
    for variable in clone.weights:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable.value),
            keras.ops.convert_to_numpy(paths[variable.path.split("/", 1)[1]].value),
            err_msg=variable.path,
        )


@pytest.mark.parametrize("mode", ["float8", "int8", "int4"])
@pytest.mark.parametrize("quantize_all", [True, False], ids=["all", "first"])
def test_quantized_layers_are_left_plain_copied_by_name_and_folded(mode, quantize_all):
    model = quantized_model(mode, quantize_all)
    quantized = [layer for layer in model.layers if getattr(layer.dtype_policy, "quantization_mode", None)]
    assert quantized, "Keras quantized no layer"
    if mode == "float8":
        for layer in quantized:
            distinct_values(layer)
    x = np.random.default_rng(0).standard_normal((8, 12)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))

    sngd, report = keras_sngd.reconstruct(model, return_report=True)

    text = str(report)
    for layer in quantized:
        assert f"- {layer.name} (" in text and f"quantized ({mode})" in text
        assert_same_variables_by_name(layer, sngd.get_layer(layer.name))
    local_fishers = {layer.name for layer in sngd.layers if isinstance(layer, keras_sngd.LocalFisher)}
    whitened = {layer.name for layer in model.layers[1:]} - {layer.name for layer in quantized}
    assert local_fishers == {f"{name}_local_fisher" for name in whitened}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sngd(x)), expected, rtol=1e-6, atol=1e-6)

    folded = keras_sngd.fold(sngd)
    assert not any(isinstance(layer, keras_sngd.LocalFisher) for layer in folded.layers)
    for layer in quantized:
        assert_same_variables_by_name(layer, folded.get_layer(layer.name))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x)), expected, rtol=1e-6, atol=1e-6)


def test_a_float8_model_trains_after_reconstruct_and_round_trips(tmp_path):
    model = quantized_model("float8", quantize_all=False)
    sngd = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 2})
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 12)).astype("float32"), rng.integers(0, 4, 64)
    sngd.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = sngd.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(int(layer.refresh_count.value) > 0 for layer in sngd.layers if isinstance(layer, keras_sngd.LocalFisher))
    path = str(tmp_path / "float8.keras")
    sngd.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(sngd(x)),
                               rtol=1e-6, atol=1e-6)


def test_a_layer_whose_config_does_not_record_its_quantized_inner_layers_is_named():
    """`model.quantize` quantizes a MultiHeadAttention's inner EinsumDense layers, which the attention's
    config does not record (Keras's own `.keras` loading of such a model fails on the missing variables):
    `reconstruct` names the layer and why, instead of a bare `set_weights` error."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    attended = keras.layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(attended))
    model.quantize("int8")
    attention = model.get_layer("mha")
    rebuilt = keras.layers.MultiHeadAttention.from_config(attention.get_config())
    rebuilt.build_from_config(attention.get_build_config())
    if len(rebuilt.weights) == len(attention.weights):
        pytest.skip("this Keras records a MultiHeadAttention's quantized inner layers in its config")
    with pytest.raises(ValueError, match="(?s)Cannot clone layer 'mha'.*rebuilds layer 'mha' with other variables"):
        keras_sngd.reconstruct(model)
