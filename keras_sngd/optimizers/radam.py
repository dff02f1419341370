"""Rectified Adam (RAdam) as a Keras 3 optimizer."""

import math
import numbers

import keras
from keras import ops

# The paper's tractability threshold: the variance of the adaptive learning rate is defined for rho_t > 4.
_RHO_THRESHOLD = 4.0

# Below this argument, `1/x - 1/expm1(x)` is summed as its Taylor series instead (see `_rho`).
_SERIES_BELOW = 0.5


@keras.saving.register_keras_serializable(package="keras_sngd")
class RAdam(keras.optimizers.Optimizer):
    """Optimizer that implements the Rectified Adam (RAdam) algorithm.

    RAdam is Adam with a rectification term that switches off the adaptive
    learning rate while the variance of its estimate is intractable (the first
    few steps) and then scales it down by the factor `r_t` that makes that
    variance consistent, which replaces the learning rate warm-up that Adam
    usually needs.

    The update for a variable `w` with gradient `g` at step `t` (`t` is
    `optimizer.iterations + 1`, starting at 1) is Algorithm 2 of the paper:

    ```
    m_t = beta_1 * m + (1 - beta_1) * g
    v_t = beta_2 * v + (1 - beta_2) * g^2
    m_hat = m_t / (1 - beta_1^t)
    rho_inf = 2 / (1 - beta_2) - 1
    rho_t = rho_inf - 2 * t * beta_2^t / (1 - beta_2^t)
    if rho_t > 4:
        v_hat = sqrt(v_t / (1 - beta_2^t))
        r_t = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                   / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        w = w - learning_rate * r_t * m_hat / (v_hat + epsilon)
    else:
        w = w - learning_rate * m_hat
    ```

    `rho_t` grows from 1 at `t = 1` towards `rho_inf`; with `beta_2=0.999`
    the first 4 steps are un-adapted momentum SGD steps. With
    `beta_2 <= 0.6`, `rho_inf <= 4` and every step is one. The threshold 4 is
    the paper's; some implementations (the authors' code, PyTorch and
    TensorFlow Addons) use 5 instead, which makes one more step un-adapted.
    `epsilon` is not part of the paper's Algorithm 2; here it is added to
    `v_hat` as in Adam's Algorithm 1 (PyTorch and the authors' code add it to
    `sqrt(v_t)` instead). The step-dependent scalars (`rho_t`, `r_t` and the
    bias corrections) are evaluated in a form that avoids the cancellation in
    `rho_inf - 2 t beta_2^t / (1 - beta_2^t)`, which in float32 is of the
    order of 1% at `beta_2=0.999` and can flip the `rho_t > 4` test at
    `beta_2=0.9999`.

    With `weight_decay`, the base optimizer's decoupled decay
    `w = w - learning_rate * weight_decay * w` is applied to each variable
    before the update above.

    Args:
        learning_rate: A non-negative float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the actual value to
            use. The learning rate. Defaults to `0.001`.
        beta_1: A float in `[0, 1)`. The exponential decay rate for the 1st
            moment estimates. Defaults to `0.9`.
        beta_2: A float in `[0, 1)`. The exponential decay rate for the 2nd
            moment estimates; it sets `rho_inf` and so the length of the
            un-adapted phase. Defaults to `0.999`.
        epsilon: A positive float added to `v_hat` for numerical stability.
            Defaults to `1e-8`.
        name: String. The name of the optimizer, used for the names of its
            variables. Defaults to `"radam"`.
        **kwargs: The keyword arguments of `keras.optimizers.Optimizer`:
            `weight_decay`, `clipnorm`, `clipvalue`, `global_clipnorm`,
            `use_ema`, `ema_momentum`, `ema_overwrite_frequency`,
            `loss_scale_factor` and `gradient_accumulation_steps`. Each
            defaults to the base optimizer's default.

    Example:

    >>> import keras
    >>> from keras_sngd.optimizers import RAdam
    >>> optimizer = RAdam(learning_rate=0.1)
    >>> variable = keras.Variable(1.0)
    >>> # Step 1 has rho_1 = 1 <= 4: an un-adapted step of learning_rate * m_hat = 0.1 * 2.0.
    >>> _ = optimizer.apply_gradients([(keras.ops.convert_to_tensor(2.0), variable)])
    >>> round(float(variable.numpy()), 6)
    0.8
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=RAdam(learning_rate=1e-3, weight_decay=1e-4), loss="mse")

    Reference:

    - [Liu et al., 2020](https://arxiv.org/abs/1908.03265), "On the Variance
      of the Adaptive Learning Rate and Beyond", ICLR 2020, Algorithm 2.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="radam", **kwargs):
        if not (callable(learning_rate) or isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)):
            learning_rate = _real(
                learning_rate, "learning_rate", "a non-negative float, a LearningRateSchedule or a callable",
                lambda x: x >= 0,
            )
        beta_1 = _real(beta_1, "beta_1", "a float in [0, 1)", lambda x: 0 <= x < 1)
        beta_2 = _real(beta_2, "beta_2", "a float in [0, 1)", lambda x: 0 <= x < 1)
        epsilon = _real(epsilon, "epsilon", "a positive float", lambda x: x > 0)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, var_list):
        """Create the 1st and 2nd moment slots (`momentum`, `velocity`) of each variable in `var_list`."""
        if self.built:
            return
        super().build(var_list)
        self._momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]
        self._velocities = [self.add_variable_from_reference(v, name="velocity") for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        """Apply one RAdam step to `variable`: the moments, then the rectified or the un-adapted step."""
        dtype = variable.dtype
        # Step scalars in at least float32 (float64 for float64 variables), then cast.
        scalar_dtype = "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"
        t = ops.cast(self.iterations + 1, scalar_dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        m_t = ops.add(ops.multiply(m, self.beta_1), ops.multiply(gradient, 1.0 - self.beta_1))
        v_t = ops.add(ops.multiply(v, self.beta_2), ops.multiply(ops.square(gradient), 1.0 - self.beta_2))
        self.assign(m, m_t)
        self.assign(v, v_t)

        # m_hat = m_t / (1 - beta_1^t), with 1 - beta_1^t = -expm1(t log beta_1) (no cancellation at small t).
        if self.beta_1 == 0.0:
            lr_over_bc1 = ops.cast(learning_rate, scalar_dtype)
        else:
            bc1 = -ops.expm1(t * math.log(self.beta_1))
            lr_over_bc1 = ops.divide(ops.cast(learning_rate, scalar_dtype), bc1)
        plain_step = ops.multiply(m_t, ops.cast(lr_over_bc1, dtype))

        rho_inf = 2.0 / (1.0 - self.beta_2) - 1.0
        if rho_inf <= _RHO_THRESHOLD:
            # rho_t < rho_inf <= 4 at every step: the rectified branch is never taken.
            self.assign_sub(variable, plain_step)
            return

        log_beta_2 = math.log(self.beta_2)
        rho_t = _rho(t, self.beta_2)
        # r_t^2 = (rho_t - 4)(rho_t - 2) / rho_t * rho_inf / ((rho_inf - 4)(rho_inf - 2)); the clamp keeps the
        # branch that `where` discards (rho_t <= 4) free of NaN.
        r_squared = ops.divide(ops.multiply(rho_t - _RHO_THRESHOLD, rho_t - 2.0), rho_t) * (
            rho_inf / ((rho_inf - _RHO_THRESHOLD) * (rho_inf - 2.0))
        )
        r_t = ops.sqrt(ops.maximum(r_squared, 0.0))
        # v_hat = sqrt(v_t / (1 - beta_2^t)), with 1 - beta_2^t = -expm1(t log beta_2).
        inverse_sqrt_bc2 = ops.rsqrt(-ops.expm1(t * log_beta_2))
        v_hat = ops.multiply(ops.sqrt(v_t), ops.cast(inverse_sqrt_bc2, dtype))
        rectified_step = ops.divide(
            ops.multiply(m_t, ops.cast(ops.multiply(lr_over_bc1, r_t), dtype)), ops.add(v_hat, self.epsilon)
        )
        self.assign_sub(variable, ops.where(rho_t > _RHO_THRESHOLD, rectified_step, plain_step))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


def _real(value, name, expected, valid):
    """`value` as a Python float if it is a finite real number with `valid(value)`; else a `ValueError`."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        if math.isfinite(value) and valid(value):
            return value
    raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _rho(t, beta_2):
    """`rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t)` for a float tensor `t >= 1`, without cancellation.

    With `l = -log(beta_2)`, `2 t beta_2^t / (1 - beta_2^t) = 2 t / expm1(t l)`, so
    `rho_t = (rho_inf - 2/l) + 2 t g(t l)` with `g(x) = 1/x - 1/expm1(x)`. The constant `rho_inf - 2/l` is
    computed in Python float64 and `g` from its series `1/2 - x/12 + x^3/720 - x^5/30240 + x^7/1209600` for
    small `x`, where `1/x - 1/expm1(x)` cancels; both terms are then accurate to a few ulp, whereas the
    direct formula loses about `log10(rho_inf / rho_t)` digits.
    """
    ell = -math.log(beta_2)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    offset = rho_inf - 2.0 / ell
    x = t * ell
    small = ops.minimum(x, _SERIES_BELOW)
    small_squared = ops.square(small)
    series = 0.5 - small / 12.0 * (
        1.0 - small_squared / 60.0 * (1.0 - small_squared / 42.0 * (1.0 - small_squared / 40.0))
    )
    large = ops.maximum(x, _SERIES_BELOW)
    direct = ops.reciprocal(large) - ops.reciprocal(ops.expm1(large))
    g = ops.where(x < _SERIES_BELOW, series, direct)
    return offset + 2.0 * t * g
