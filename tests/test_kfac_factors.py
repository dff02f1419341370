"""K-FAC factors and one K-FAC step against numpy references (Dense and Conv2D; TensorFlow and JAX).

The numpy references are written from the definitions (per-example gradients of a mean-squared error,
explicit receptive fields), independently of the code under test. The JAX checks run the same functions
in a subprocess with `KERAS_BACKEND=jax`.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_sngd.optimizers import KFAC
from keras_sngd.optimizers import prepare_kfac
from keras_sngd.optimizers.kfac_layers import KFACConv2D
from keras_sngd.optimizers.kfac_layers import KFACDense
from keras_sngd.optimizers.kfac_layers import conv_patches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAMPING, LEARNING_RATE = 1e-2, 0.1


def homogeneous_second_moment(rows):
    rows = np.concatenate([rows, np.ones((rows.shape[0], 1))], axis=1)
    return rows.T @ rows / rows.shape[0]


def reference_patches(inputs, kernel_size, stride):
    """Receptive fields of a 'same'-padded 2D convolution, flattened as (row, column, channel)."""
    batch, height, width, channels = inputs.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kernel_size - height, 0)
    pad_w = max((out_w - 1) * stride + kernel_size - width, 0)
    padded = np.pad(inputs, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    patches = np.empty((batch, out_h, out_w, kernel_size * kernel_size * channels))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size, :]
            patches[:, i, j] = window.reshape(batch, -1)
    return patches


def mse_per_example_gradients(outputs, targets):
    """g_it = dl_i/dz_it for Keras's mean squared error, l_i = mean over positions and units."""
    per_example = outputs[0].size
    return 2.0 * (outputs - targets) / per_example


def reference_factors(patches, outputs, targets):
    """A = E[[a,1][a,1]^T] over examples and positions; S = E_i[sum_t g_it g_it^T]."""
    batch, units = outputs.shape[0], outputs.shape[-1]
    gradients = mse_per_example_gradients(outputs, targets).reshape(-1, units)
    return homogeneous_second_moment(patches.reshape(-1, patches.shape[-1])), gradients.T @ gradients / batch


def reference_kfac_step(kernel, bias, patches, outputs, targets, damping, learning_rate, kl_clip=None):
    """The new (kernel, bias) after one K-FAC step (momentum 0, inverses from this batch's factors)."""
    batch, units = outputs.shape[0], outputs.shape[-1]
    input_factor, output_factor = reference_factors(patches, outputs, targets)
    loss_gradient = mse_per_example_gradients(outputs, targets).reshape(-1, units) / batch  # dL/dz
    rows = patches.reshape(-1, patches.shape[-1])
    gradient = np.concatenate([rows.T @ loss_gradient, loss_gradient.sum(axis=0, keepdims=True)], axis=0)
    pi = np.sqrt((np.trace(input_factor) / input_factor.shape[0]) / (np.trace(output_factor) / units))
    direction = (
        np.linalg.inv(input_factor + pi * np.sqrt(damping) * np.eye(input_factor.shape[0]))
        @ gradient
        @ np.linalg.inv(output_factor + np.sqrt(damping) / pi * np.eye(units))
    )
    if kl_clip is not None:
        direction *= min(1.0, np.sqrt(kl_clip / (learning_rate**2 * np.sum(direction * gradient))))
    new = np.concatenate([kernel.reshape(-1, units), bias[None]], axis=0) - learning_rate * direction
    return new[:-1].reshape(kernel.shape), new[-1]


def dense_case():
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(8, 5)).astype("float32")
    targets = rng.normal(size=(8, 4)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), KFACDense(4, factor_decay=0.0)])
    return model, inputs, targets, lambda layer: inputs


def conv_case():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    targets = rng.normal(size=(4, 3, 3, 3)).astype("float32")
    model = keras.Sequential([keras.Input((6, 6, 2)), KFACConv2D(3, 3, strides=2, padding="same", factor_decay=0.0)])
    return model, inputs, targets, lambda layer: reference_patches(inputs.astype("float64"), 3, 2)


CASES = {"dense": dense_case, "conv2d": conv_case}


def relative(actual, expected):
    return float(np.linalg.norm(np.asarray(actual, "float64") - expected) / np.linalg.norm(expected))


def factor_errors(case, jit_compile):
    """Relative errors of A, S (and of the layer output against patches @ kernel) after one step."""
    keras.utils.set_random_seed(0)
    model, inputs, targets, patches_of = CASES[case]()
    layer = model.layers[-1]
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit_compile)
    outputs = model.predict(inputs, verbose=0).astype("float64")
    kernel, bias = (np.asarray(weight, "float64") for weight in layer.get_weights()[:2])
    patches = patches_of(layer)
    units = kernel.shape[-1]
    by_patches = patches.reshape(-1, patches.shape[-1]) @ kernel.reshape(-1, units) + bias
    model.train_on_batch(inputs, targets)
    input_factor, output_factor = reference_factors(patches, outputs, targets.astype("float64"))
    return {
        "output": relative(outputs.reshape(-1, units), by_patches),
        "A": relative(layer.input_factor.numpy(), input_factor),
        "S": relative(layer.output_factor.numpy(), output_factor),
        "weight": float(layer.factor_weight.numpy()),
    }


def step_errors(case, kl_clip):
    """Relative errors of the kernel and bias after one KFAC step against `reference_kfac_step`."""
    keras.utils.set_random_seed(0)
    model, inputs, targets, patches_of = CASES[case]()
    layer = model.layers[-1]
    optimizer = KFAC(LEARNING_RATE, momentum=0.0, damping=DAMPING, kl_clip=kl_clip, update_every=1)
    model.compile(optimizer, "mse")
    outputs = model.predict(inputs, verbose=0).astype("float64")
    kernel, bias = (np.asarray(weight, "float64") for weight in layer.get_weights()[:2])
    expected_kernel, expected_bias = reference_kfac_step(
        kernel, bias, patches_of(layer), outputs, targets.astype("float64"), DAMPING, LEARNING_RATE, kl_clip
    )
    model.train_on_batch(inputs, targets)
    plain_step = np.linalg.norm(expected_kernel - kernel)
    return {
        "kernel": relative(layer.get_weights()[0], expected_kernel),
        "bias": relative(layer.get_weights()[1], expected_bias),
        "moved": float(plain_step),
    }


def all_errors():
    """Every check of this file on the current backend (what the JAX subprocess prints)."""
    # Jitted factors (the jit-free path is the same code) and each case's step once, clipped or not, to
    # keep the subprocess short.
    return {
        "factors": {case: factor_errors(case, True) for case in CASES},
        "steps": {"dense": step_errors("dense", None), "conv2d": step_errors("conv2d", 1e-6)},
    }


def check_factor_errors(errors):
    assert errors["output"] < 1e-5, errors  # the numpy receptive fields are the layer's own
    assert errors["A"] < 1e-5, errors
    assert errors["S"] < 1e-5, errors
    assert errors["weight"] == 1.0, errors  # factor_decay=0: the batch factors themselves


def check_step_errors(errors):
    assert errors["moved"] > 1e-3, errors
    assert errors["kernel"] < 1e-4, errors
    assert errors["bias"] < 1e-4, errors


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_factors_match_numpy(case, jit_compile):
    check_factor_errors(factor_errors(case, jit_compile))


@pytest.mark.parametrize("kl_clip", [None, 1e-6])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_matches_numpy(case, kl_clip):
    check_step_errors(step_errors(case, kl_clip))


def test_kl_clip_bound_is_active_in_the_clipped_cases():
    # Otherwise the clipped step tests would test nothing more than the unclipped ones.
    keras.utils.set_random_seed(0)
    model, inputs, targets, patches_of = dense_case()
    outputs = model.predict(inputs, verbose=0).astype("float64")
    kernel, bias = (np.asarray(weight, "float64") for weight in model.layers[-1].get_weights()[:2])
    args = (kernel, bias, patches_of(None), outputs, targets.astype("float64"), DAMPING, LEARNING_RATE)
    free, bounded = reference_kfac_step(*args), reference_kfac_step(*args, kl_clip=1e-6)
    assert np.linalg.norm(bounded[0] - kernel) < 0.5 * np.linalg.norm(free[0] - kernel)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2), (2, 9, 2)),
        (keras.layers.Conv2D(4, (2, 3), strides=(2, 1), padding="valid"), (2, 7, 6, 3)),
        (keras.layers.Conv3D(2, 2, strides=2, padding="same"), (2, 5, 4, 4, 2)),
    ],
    ids=["conv1d_causal_dilated", "conv2d_strided", "conv3d_same"],
)
def test_prepared_conv_layers_keep_outputs_and_receptive_fields(layer, shape):
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, layer(inputs))
    prepared = prepare_kfac(model)
    data = np.random.default_rng(3).normal(size=shape).astype("float32")
    np.testing.assert_allclose(prepared.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-5)
    converted = prepared.layers[-1]
    assert type(converted).__name__ == "KFAC" + type(layer).__name__
    # The patches, times the reshaped kernel, are the convolution (before the bias).
    padded = data
    padding = layer.padding
    if padding == "causal":
        padded = np.pad(data, [(0, 0), (layer.dilation_rate[0] * (layer.kernel_size[0] - 1), 0), (0, 0)])
        padding = "valid"
    patches = keras.ops.convert_to_numpy(
        conv_patches(keras.ops.convert_to_tensor(padded), layer.kernel_size, list(layer.strides), padding, layer.dilation_rate)
    )
    kernel, bias = layer.get_weights()
    np.testing.assert_allclose(patches @ kernel.reshape(-1, kernel.shape[-1]) + bias, model.predict(data, verbose=0), atol=1e-5)
    # One training step fills the factors, with the homogeneous coordinate's 1 in A's corner.
    prepared.compile(keras.optimizers.SGD(0.0), "mse")
    prepared.train_on_batch(data, np.zeros(prepared.output_shape[1:], "float32")[None].repeat(shape[0], 0))
    input_factor, _ = (keras.ops.convert_to_numpy(factor) for factor in converted.factors())
    assert input_factor.shape == (int(np.prod(kernel.shape[:-1])) + 1,) * 2
    assert input_factor[-1, -1] == pytest.approx(1.0)


def test_factors_and_step_match_numpy_on_jax():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install jax)")
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    environment["PYTHONPATH"] = os.pathsep.join([ROOT, environment.get("PYTHONPATH", "")])
    code = "import json; from tests.test_kfac_factors import all_errors; print(json.dumps(all_errors()))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for value in errors["factors"].values():
        check_factor_errors(value)
    for value in errors["steps"].values():
        check_step_errors(value)
