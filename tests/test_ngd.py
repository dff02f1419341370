"""The NGD baseline: FisherStatistics + the NGD optimizer, and its equivalence with SNGD."""

import os

import keras
import numpy as np
import pytest
from tests.reference import eigh_roots
from tests.reference import spd_matrix

import keras_sngd
from keras_sngd import FisherStatistics
from keras_sngd.optimizers.ngd import NGD


def plain_mlp():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)], name="plain"
    )


def data(seed=0):
    rng = np.random.default_rng(seed)
    inputs = (rng.standard_normal((32, 8)) * rng.uniform(0.3, 2.0, 8) + 0.5).astype("float32")
    return inputs, rng.standard_normal((32, 3)).astype("float32")


def test_statistics_layer_is_identity_and_keeps_local_fisher_state():
    layer = FisherStatistics(update_every=1)
    inputs, _ = data()
    np.testing.assert_array_equal(np.asarray(layer(inputs, training=True)), inputs)
    assert int(layer.refresh_count.numpy()) == 1
    assert not np.allclose(layer.inverse_root.numpy(), np.eye(8))
    assert layer.refresh_mode.kind == "statistics-only"


def test_one_ngd_step_is_w_minus_lr_inverse_fisher_gradient():
    plain = plain_mlp()
    model = keras_sngd.reconstruct(plain, layer_class=FisherStatistics, local_fisher_arguments={"update_every": 10**6})
    statistics, dense = model.layers[0], model.layers[1]
    fisher = spd_matrix(8, 30.0, seed=1)
    statistics.inverse_root.assign(eigh_roots(fisher)[1].astype("float32"))
    optimizer = NGD(0.1).attach(model)
    assert optimizer.preconditioned_variables == [dense.kernel.path, model.layers[3].kernel.path]
    inputs, targets = data()
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(targets, model(inputs))
    gradient = tape.gradient(loss, dense.kernel)
    expected = dense.kernel.numpy() - 0.1 * np.linalg.solve(fisher, np.asarray(gradient, np.float64))
    model.compile(optimizer, "mse")
    model.train_on_batch(inputs, targets)
    np.testing.assert_allclose(dense.kernel.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_ngd_and_sngd_follow_the_same_trajectory():
    """Proposition 1 over many steps and refreshes: SNGD's effective weights track NGD's weights."""
    plain = plain_mlp()
    arguments = {"update_every": 3, "damping": 0.05}
    # Without SNGD's trust region, which NGD does not have (reconstruct gives every network one).
    sngd = keras_sngd.reconstruct(plain, local_fisher_arguments=dict(arguments, max_step=None))
    ngd = keras_sngd.reconstruct(plain, layer_class=FisherStatistics, local_fisher_arguments=arguments)
    sngd.compile(keras.optimizers.SGD(0.05), "mse")
    ngd.compile(NGD(0.05).attach(ngd), "mse")
    for step in range(10):
        inputs, targets = data(seed=step)
        sngd.train_on_batch(inputs, targets)
        ngd.train_on_batch(inputs, targets)
    assert int(sngd.layers[0].refresh_count.numpy()) == int(ngd.layers[0].refresh_count.numpy()) == 3
    folded = keras_sngd.fold(ngd)
    effective = keras_sngd.fold(sngd)
    assert [layer.name for layer in folded.layers] == [layer.name for layer in plain.layers]
    moved = False
    for a, b, original in zip(effective.weights, folded.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-4)
        moved |= not np.allclose(b.numpy(), original.numpy(), atol=1e-3)
    assert moved


def test_attach_errors():
    with pytest.raises(ValueError, match="no FisherStatistics"):
        NGD(0.1).attach(plain_mlp())


def test_unattached_ngd_refuses_to_train_as_sgd():
    model = keras_sngd.reconstruct(plain_mlp(), layer_class=FisherStatistics)
    model.compile(NGD(0.1), "mse")
    inputs, targets = data()
    with pytest.raises(ValueError, match="not attached"):
        model.train_on_batch(inputs, targets)


def test_attach_skips_weightless_consumers_and_refuses_shared_kernels():
    inputs, other = keras.Input((8,)), keras.Input((8,))
    statistics = FisherStatistics(name="statistics")(inputs)
    dense = keras.layers.Dense(8, name="dense")
    residual = keras.Model(inputs, keras.layers.Add()([dense(statistics), statistics]))
    assert NGD(0.1).attach(residual).preconditioned_variables == [dense.kernel.path]
    shared = keras.Model([inputs, other], [dense(statistics), dense(other)])
    with pytest.raises(ValueError, match="cannot precondition consumer 'dense': the layer is also called on inputs"):
        NGD(0.1).attach(shared)


def test_optimizers_are_reachable_after_import_keras_sngd_alone():
    """The docstrings write `keras_sngd.optimizers.NGD(...)` after `import keras_sngd`: a new process, where
    no other test imported the subpackage first."""
    import subprocess
    import sys

    code = "import keras_sngd; print(keras_sngd.optimizers.NGD.__name__, keras_sngd.optimizers.KFAC.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["NGD", "KFAC"]


def test_the_report_names_the_inserted_layer_class():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    _, report = keras_sngd.reconstruct(model, layer_class=keras_sngd.FisherStatistics, return_report=True)
    assert "1 FisherStatistics layers inserted" in str(report)
    assert "FisherStatistics 'dense_local_fisher'" in str(report) and "LocalFisher" not in str(report)
