"""Paper, Proposition 1: one SGD step on the reconstructed model is one NGD step on the plain model.

With U = G^(-1/2) in the LocalFisher and W' = G^(1/2) W in the consumer (same function), SGD on W' moves
the effective weights U W' exactly as W <- W - lr * G^-1 * dL/dW moves the plain model's weights (for a
convolution: on every kernel tap, over input channels).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tests.reference import eigh_roots
from tests.reference import spd_matrix

import keras_sngd
from keras_sngd.binding import binding_for

LEARNING_RATE = 0.1


@pytest.mark.parametrize(
    "shape, layer",
    [
        ((6,), lambda: keras.layers.Dense(3)),
        ((5, 5, 4), lambda: keras.layers.Conv2D(3, 3, padding="same")),
    ],
)
def test_sgd_on_reconstruction_is_ngd_on_plain_model(shape, layer):
    plain = keras.Sequential([keras.Input(shape), layer()])
    # No refresh and no trust region (reconstruct sets one for convolutional networks): the bare step.
    sngd = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 10**6, "max_step": None})
    local_fisher, consumer = sngd.layers
    features = shape[-1]
    fisher = spd_matrix(features, 50.0, seed=3)
    root, inverse_root = eigh_roots(fisher)
    binding, _ = binding_for(consumer)
    kernel = np.asarray(plain.layers[0].kernel.numpy(), np.float64)
    local_fisher.inverse_root.assign(inverse_root.astype("float32"))
    consumer.kernel.assign(np.asarray(binding.mix(root, kernel)).astype("float32"))

    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((16,) + shape).astype("float32")
    targets = rng.standard_normal((16,) + tuple(plain.output_shape[1:])).astype("float32")
    np.testing.assert_allclose(np.asarray(sngd(inputs)), np.asarray(plain(inputs)), rtol=1e-4, atol=1e-5)

    # NGD on the plain model, by hand: W <- W - lr * G^-1 * dL/dW.
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(targets, plain(inputs))
    kernel_gradient, bias_gradient = tape.gradient(loss, [plain.layers[0].kernel, plain.layers[0].bias])
    expected_kernel = kernel - LEARNING_RATE * np.asarray(
        binding.mix(np.linalg.inv(fisher), np.asarray(kernel_gradient, np.float64))
    )
    expected_bias = plain.layers[0].bias.numpy() - LEARNING_RATE * np.asarray(bias_gradient)

    # Plain SGD on the reconstruction, through model.fit's train step.
    sngd.compile(keras.optimizers.SGD(LEARNING_RATE), "mse")
    sngd.train_on_batch(inputs, targets)
    effective_kernel = np.asarray(binding.mix(inverse_root, np.asarray(consumer.kernel.numpy(), np.float64)))
    assert int(local_fisher.refresh_count.numpy()) == 0  # U held fixed: the step is the whole story
    np.testing.assert_allclose(effective_kernel, expected_kernel, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(consumer.bias.numpy(), expected_bias, rtol=1e-5, atol=1e-6)
    # And it is not plain SGD on the plain model.
    sgd_kernel = kernel - LEARNING_RATE * np.asarray(kernel_gradient)
    assert np.abs(effective_kernel - sgd_kernel).max() > 100 * np.abs(effective_kernel - expected_kernel).max()
