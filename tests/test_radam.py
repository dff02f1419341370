"""RAdam against a float64 numpy transcription of Liu et al. (2020), Algorithm 2; training, saving, arguments."""

import doctest
import importlib.util
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_sngd.optimizers
from keras_sngd.optimizers import RAdam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rho(t, beta_2):
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    return rho_inf, rho_inf - 2.0 * t * beta_2**t / (1.0 - beta_2**t)


def reference_step(w, m, v, g, t, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=None):
    """One step of the published rule in float64; `weight_decay` is the base optimizer's decoupled decay,
    applied to `w` before the step. Returns `(w, m, v, rectified)`."""
    w, m, v, g = (np.asarray(x, np.float64) for x in (w, m, v, g))
    if weight_decay is not None:
        w = w - lr * weight_decay * w
    m = beta_1 * m + (1.0 - beta_1) * g
    v = beta_2 * v + (1.0 - beta_2) * g**2
    m_hat = m / (1.0 - beta_1**t)
    rho_inf, rho_t = rho(t, beta_2)
    rectified = rho_t > 4.0
    if rectified:
        v_hat = np.sqrt(v / (1.0 - beta_2**t))
        r_t = np.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        w = w - lr * r_t * m_hat / (v_hat + epsilon)
    else:
        w = w - lr * m_hat
    return w, m, v, rectified


SHAPES = [(3, 4), (4,), ()]


def random_problem(steps, dtype="float32", seed=0):
    """Initial values of a few variables and `steps` rounds of gradients for them, exactly representable in
    `dtype` (so that the reference sees the tested inputs)."""
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    gradients = [[(rng.standard_normal(shape) * 0.5 + 0.1).astype(dtype) for shape in SHAPES] for _ in range(steps)]
    return initial, gradients


def slots(optimizer, kind):
    return [variable for variable in optimizer.variables if variable.name.endswith("_" + kind)]


def run_against_reference(optimizer, steps, dtype, rtol, lr_at, beta_1=0.9, beta_2=0.999, weight_decay=None):
    """Apply `steps` random gradients with `optimizer` and with `reference_step`; compare after every step.
    `lr_at(t)` is the learning rate of step `t`. Returns the reference's branch at each step."""
    initial, gradients = random_problem(steps, dtype)
    variables = [keras.Variable(value, dtype=dtype) for value in initial]
    reference = [(value, np.zeros(value.shape), np.zeros(value.shape)) for value in initial]
    branches = []
    for t in range(1, steps + 1):
        optimizer.apply_gradients(zip(gradients[t - 1], variables))
        new_reference = []
        for (w, m, v), g in zip(reference, gradients[t - 1]):
            w, m, v, rectified = reference_step(
                w, m, v, g, t, lr_at(t), beta_1=beta_1, beta_2=beta_2, weight_decay=weight_decay
            )
            new_reference.append((w, m, v))
        reference = new_reference
        branches.append(rectified)
        assert int(optimizer.iterations.numpy()) == t
        # atol: about one ulp of the unit-scale inputs, for entries where the moments or weights cancel to ~0.
        atol = 1e-7 if dtype == "float32" else 1e-15
        for variable, momentum, velocity, (w, m, v) in zip(
            variables, slots(optimizer, "momentum"), slots(optimizer, "velocity"), reference
        ):
            assert variable.dtype == dtype
            np.testing.assert_allclose(variable.numpy(), w, rtol=rtol, atol=atol, err_msg=f"w at step {t}")
            np.testing.assert_allclose(momentum.numpy(), m, rtol=rtol, atol=atol, err_msg=f"m at step {t}")
            np.testing.assert_allclose(velocity.numpy(), v, rtol=rtol, atol=atol, err_msg=f"v at step {t}")
    return branches


# With beta_2=0.999, rho_t = 1, 2.0, 3.0, 3.997, 4.996, ...; with beta_2=0.9, rho_inf = 19 and
# rho_t = 1, 1.95, 2.86, 3.74, 4.58, ...: both have four un-adapted steps, then rectified ones.
@pytest.mark.parametrize("beta_2", [0.999, 0.9])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-11)])
def test_matches_published_rule_step_by_step(beta_2, dtype, rtol):
    optimizer = RAdam(learning_rate=0.01, beta_2=beta_2)
    # The base optimizer keeps a float learning rate in a `floatx()` (float32) variable.
    lr = float(np.float32(0.01))
    branches = run_against_reference(optimizer, 12, dtype, rtol, lr_at=lambda t: lr, beta_2=beta_2)
    assert branches == [False] * 4 + [True] * 8


@pytest.mark.parametrize("beta_2", [0.999, 0.9, 0.9999])
@pytest.mark.parametrize("t", [1, 4, 5, 6, 10, 100, 1000, 10**6])
def test_single_float32_step_from_any_state(beta_2, t):
    """One step at step `t` from random moments, on a variable at zero so that float32 resolves the step itself.
    The direct float32 `rho_t` is off by ~1% at beta_2=0.999 and flips the `rho_t > 4` test at 0.9999."""
    rng = np.random.default_rng(t)
    m0, g = (rng.standard_normal(6).astype("float32") for _ in range(2))
    v0 = rng.uniform(0.5, 2.0, 6).astype("float32")
    variable = keras.Variable(np.zeros(6, "float32"))
    optimizer = RAdam(learning_rate=0.01, beta_2=beta_2)
    optimizer.build([variable])
    slots(optimizer, "momentum")[0].assign(m0)
    slots(optimizer, "velocity")[0].assign(v0)
    optimizer.iterations.assign(t - 1)
    optimizer.apply_gradients([(g, variable)])
    w, m, v, rectified = reference_step(np.zeros(6), m0, v0, g, t, 0.01, beta_2=beta_2)
    assert rectified == (t >= 5)
    np.testing.assert_allclose(variable.numpy(), w, rtol=5e-6)
    np.testing.assert_allclose(slots(optimizer, "momentum")[0].numpy(), m, rtol=1e-6)
    np.testing.assert_allclose(slots(optimizer, "velocity")[0].numpy(), v, rtol=1e-6)


@pytest.mark.parametrize("beta_1,beta_2", [(0.0, 0.999), (0.5, 0.99)])
def test_other_betas(beta_1, beta_2):
    optimizer = RAdam(learning_rate=0.01, beta_1=beta_1, beta_2=beta_2)
    branches = run_against_reference(
        optimizer, 8, "float32", 1e-5, lr_at=lambda t: 0.01, beta_1=beta_1, beta_2=beta_2
    )
    assert branches == [False] * 4 + [True] * 4


@pytest.mark.parametrize("beta_2", [0.6, 0.0])
def test_small_beta_2_never_rectifies(beta_2):
    """rho_inf = 2/(1 - beta_2) - 1 <= 4: every step is the un-adapted one."""
    optimizer = RAdam(learning_rate=0.01, beta_2=beta_2)
    branches = run_against_reference(optimizer, 6, "float32", 1e-5, lr_at=lambda t: 0.01, beta_2=beta_2)
    assert not any(branches)


def test_schedule_and_callable_learning_rates():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=1, decay_rate=0.8)
    # The base optimizer evaluates the schedule at `iterations`, which is t - 1 during step t.
    run_against_reference(RAdam(learning_rate=schedule), 10, "float32", 1e-5, lr_at=lambda t: 0.02 * 0.8 ** (t - 1))
    run_against_reference(RAdam(learning_rate=lambda: 0.005), 10, "float32", 1e-5, lr_at=lambda t: 0.005)


def test_weight_decay_is_decoupled_and_applied_before_the_step():
    optimizer = RAdam(learning_rate=0.05, weight_decay=0.1)
    run_against_reference(optimizer, 10, "float32", 1e-5, lr_at=lambda t: 0.05, weight_decay=0.1)


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((256, 8)).astype("float32")
    targets = (np.tanh(inputs @ rng.standard_normal((8, 1))) + 0.1 * rng.standard_normal((256, 1))).astype("float32")
    return inputs, targets


def tiny_model(optimizer, jit_compile):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def test_fit_with_jit_compile_reduces_the_loss():
    inputs, targets = regression_data()
    model = tiny_model(RAdam(learning_rate=0.01), jit_compile=True)
    initial_loss = model.evaluate(inputs, targets, verbose=0)
    history = model.fit(inputs, targets, batch_size=32, epochs=6, shuffle=False, verbose=0).history["loss"]
    assert model.jit_compile
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.5 * initial_loss
    assert int(model.optimizer.iterations.numpy()) == 6 * 8


def test_config_round_trip_and_serialization():
    optimizer = RAdam(
        learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-6, weight_decay=0.01, global_clipnorm=1.0,
        use_ema=True, loss_scale_factor=2.0, gradient_accumulation_steps=2, name="my_radam",
    )
    config = optimizer.get_config()
    assert config["beta_1"] == 0.8 and config["beta_2"] == 0.99 and config["epsilon"] == 1e-6
    assert config["learning_rate"] == pytest.approx(0.003)
    assert config["weight_decay"] == 0.01 and config["global_clipnorm"] == 1.0 and config["use_ema"]
    assert config["loss_scale_factor"] == 2.0 and config["gradient_accumulation_steps"] == 2
    assert config["name"] == "my_radam"
    assert RAdam.from_config(config).get_config() == config

    assert keras.saving.get_registered_name(RAdam) == "keras_sngd>RAdam"
    serialized = keras.optimizers.serialize(optimizer)
    restored = keras.optimizers.deserialize(json.loads(json.dumps(serialized)))
    assert type(restored) is RAdam and restored.get_config() == config

    scheduled = RAdam(learning_rate=keras.optimizers.schedules.CosineDecay(0.01, decay_steps=100))
    restored = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(scheduled))))
    assert restored.get_config()["learning_rate"]["class_name"] == "CosineDecay"
    assert restored.get_config() == scheduled.get_config()
    assert RAdam().name == "radam" and "RAdam" in keras_sngd.optimizers.__all__


def test_saved_model_keeps_slots_and_continues_identically(tmp_path):
    inputs, targets = regression_data()
    model = tiny_model(RAdam(learning_rate=0.01, weight_decay=0.01), jit_compile=False)
    model.fit(inputs, targets, batch_size=64, epochs=2, shuffle=False, verbose=0)  # 8 steps: past the warm-up
    path = str(tmp_path / "radam.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert type(loaded.optimizer) is RAdam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    # Keras restores optimizer variables by position (the slot names embed the model variables' paths, which
    # differ after loading: "sequential_dense_kernel_momentum" becomes "dense_kernel_momentum").
    kinds = [variable.path.rsplit("_", 1)[-1] for variable in model.optimizer.variables]
    assert [variable.path.rsplit("_", 1)[-1] for variable in loaded.optimizer.variables] == kinds
    assert kinds.count("momentum") == kinds.count("velocity") == len(model.trainable_weights)
    for original, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=original.path)
    assert int(loaded.optimizer.iterations.numpy()) == 8

    losses = model.fit(inputs, targets, batch_size=64, epochs=3, shuffle=False, verbose=0).history["loss"]
    loaded_losses = loaded.fit(inputs, targets, batch_size=64, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert loaded_losses == losses
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": -0.1}, {"learning_rate": "0.1"}, {"learning_rate": float("nan")},
        {"beta_1": 1.5}, {"beta_1": 1.0}, {"beta_1": -0.1}, {"beta_1": None},
        {"beta_2": 1.0}, {"beta_2": -0.5}, {"beta_2": True},
        {"epsilon": 0.0}, {"epsilon": -1e-8}, {"epsilon": float("inf")},
    ],
)
def test_bad_argument_raises_naming_it(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be")) as error:
        RAdam(**kwargs)
    assert f"Received: {name}={value!r}" in str(error.value)


def test_bad_argument_message_and_accepted_edge_values():
    with pytest.raises(ValueError, match=re.escape("`beta_1` must be a float in [0, 1). Received: beta_1=1.5")):
        RAdam(beta_1=1.5)
    with pytest.raises(ValueError, match="not recognized"):
        RAdam(momentum=0.9)
    optimizer = RAdam(learning_rate=1, beta_1=0, beta_2=np.float32(0.99), epsilon=1e-12)
    assert optimizer.get_config()["learning_rate"] == 1.0 and optimizer.beta_1 == 0.0
    assert type(optimizer.beta_2) is float


def test_docstring_example():
    radam_module = sys.modules[RAdam.__module__]
    result = doctest.testmod(radam_module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


JAX_SCRIPT = r"""
import json
import jax
import keras
import numpy as np
from keras_sngd.optimizers import RAdam

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
initial = [rng.standard_normal(s).astype("float32") for s in [(3, 4), (4,)]]
grads = [[rng.standard_normal(w.shape).astype("float32") for w in initial] for _ in range(10)]
variables = [keras.Variable(w) for w in initial]
optimizer = RAdam(learning_rate=0.01)
optimizer.build(variables)
step = jax.jit(optimizer.stateless_apply)
trainable = [v.value for v in variables]
state = [v.value for v in optimizer.variables]
for g in grads:
    trainable, state = step(state, g, trainable)

x = rng.standard_normal((128, 8)).astype("float32")
y = np.tanh(x @ rng.standard_normal((8, 1))).astype("float32")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
model.compile(optimizer=RAdam(learning_rate=0.01), loss="mse", jit_compile=True)
first = float(model.evaluate(x, y, verbose=0))
losses = model.fit(x, y, batch_size=16, epochs=8, shuffle=False, verbose=0).history["loss"]
print(json.dumps({"backend": keras.backend.backend(), "initial": [w.tolist() for w in initial],
                  "grads": [[g.tolist() for g in gs] for gs in grads],
                  "final": [np.asarray(w).tolist() for w in trainable], "first": first, "losses": losses}))
"""


def test_jax_backend_under_jit():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    environment["PYTHONPATH"] = os.pathsep.join([ROOT, environment.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True, env=environment, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    for index, w in enumerate(report["initial"]):
        w, m, v = np.array(w), 0.0, 0.0
        for t, gradients in enumerate(report["grads"], 1):
            w, m, v, _ = reference_step(w, m, v, np.array(gradients[index]), t, 0.01)
        np.testing.assert_allclose(report["final"][index], w, rtol=1e-5, atol=1e-8)
    assert np.all(np.isfinite(report["losses"])) and report["losses"][-1] < 0.7 * report["first"]
