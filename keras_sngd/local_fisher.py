"""The local Fisher layer: multiplies its input by `G^(-1/2)`, the inverse root of the local Fisher matrix."""

import math
import warnings

import keras
from keras import ops

from keras_sngd.consumers import consumer_bindings
from keras_sngd.refresh import refresh_inverse_root
from keras_sngd.statistics import batch_moments
from keras_sngd.statistics import local_fisher_matrix
from keras_sngd.statistics import update_moving_moments
from keras_sngd.trust_region import bounded_step
from keras_sngd.validation import check_float

_REFRESH_DTYPES = ("float32", "float64")


@keras.saving.register_keras_serializable(package="keras_sngd")
class LocalFisher(keras.layers.Layer):
    """Local Fisher layer for structured natural gradient descent (SNGD).

    Put it right before a parameterized layer (Dense, Conv, RNN). It multiplies its input `x` by the
    non-trainable matrix `U = G^(-1/2)`, where `G` is the local Fisher matrix of that input:

    ```
    y = U x,   U = G^(-1/2),   G = E(v_f) * E[x x^T]                  (paper, local Fisher matrix)
    ```

    Training the next layer's weights `w'` with plain gradient descent is then natural gradient descent
    on the effective weights `w = U w'` (paper, Proposition 1), with the layer-wise Fisher `G`. Features
    are on `axis` and statistics run over every other axis: before a Dense layer over the batch, before a
    Conv layer over the batch and every pixel (channel whitening), before an RNN over batch and time.

    **During training** (`training=True`, as in `model.fit`), on every call:

    ```
    S <- momentum * S + (1 - momentum) * x^T x / n       # n rows: every position but the feature axis
    m <- momentum * m + (1 - momentum) * mean(x)
    c <- momentum * c + (1 - momentum)                   # bias correction: E[x x^T] = S / c
    step <- step + 1
    every `update_every` steps (step % update_every == 0):
        G = activation_factor * (S / c)                   # minus (m/c)(m/c)^T when center=True
        G^(1/2), U_new = newton_schulz(G, damping)        # paper Eq. 15, float32 by default
        W'  <- G^(1/2) U W'                               # each consumer's kernel, on its input axis
        b'  <- b' + (U W')^T (m/c - mu)                   # center=True only; then mu <- m/c
        U   <- U_new
    y = U x          (y = U (x - mu) when center=True)    # with the refreshed U on a refresh step
    ```

    The refresh runs inside the compiled train step (`keras.ops.cond`). **Function-preserving refresh**
    (default): the layers this one feeds (found in the model graph, so also when inserted by hand or
    loaded from `.keras`) have their kernels re-expressed so that the effective weights `U W'`, and so the
    model's outputs, do not change (as in PRONG, Desjardins et al. 2015); between refreshes, SGD on `W'` is
    NGD on `W = U W'` (paper, Proposition 1). **Replacing refresh**: with `preserve_function=False`, or when
    a consumer cannot absorb `U` (a depthwise convolution, a layer that is not Dense/Conv/RNN/EinsumDense,
    a nested model), or on the JAX backend (its trainer drops assignments to trainable variables made in
    the train step), `U` is replaced and the function moves at each refresh, like batch normalization
    replacing its statistics; a warning says so and `describe()` shows which mode a layer is in. SGD
    momentum slots are not re-expressed.

    A batch with a NaN or Inf leaves the statistics unchanged; a refresh whose iteration does not converge
    or is not finite keeps the previous `U` (and the consumers' weights) and increments
    `failed_refresh_count`. Until the first refresh, `U` is the identity and the layer changes nothing.

    **Trust region** (`max_step`, set by `reconstruct` for convolutional and recurrent networks): since
    `y` is white, the norm of a step `(dW', db)` is its effect on the layer's pre-activations, the Fisher
    norm of the step, and the norm of `(W', b)` the size of the layer's output. With `max_step` set, each
    training step first shortens the consumers' previous optimizer step to at most `max_step` times the
    norm of `(W', b)` (K-FAC's update clipping, per layer, relative to the layer's size as LARS's trust
    ratio, independent of the learning rate). Why convolutional networks need it, with stronger damping:
    docs/stability.md.

    **During inference** (`training=False`): `y = U x`, and nothing is updated.

    State (non-trainable, float32 also under mixed precision, saved with the model): `second_moment`
    (`S`), `mean` (`m`), `statistics_weight` (`c`), `inverse_root` (`U`), `shift` (`mu`, only with
    `center=True`), and int32 counters `step`,
    `refresh_count`, `failed_refresh_count` and `skipped_batch_count` (batches with non-finite values).

    **`activation_factor`** is the paper's `E(v_f)`, the mean derivative of the next layer's activation
    (the fraction of active units for ReLU), for you to set where you know it. It is one scalar per layer,
    so it only scales that layer's effective learning rate by `1 / activation_factor`. The default 1.0
    was chosen by measurement (`python benchmarks/defaults_sweep.py`, see the README), as were
    `update_every`, `damping` and `momentum`: on the paper's ReLU MLP, 0.5 (about the fraction of active
    ReLUs) reached a higher training loss at the same learning rate (0.054 against 0.040).

    Args:
        axis: int, the feature axis. Defaults to `-1`.
        momentum: float in [0, 1), the moving average's momentum. Defaults to `0.99`.
        update_every: int >= 1, training steps between refreshes of `U`. Defaults to `50`.
        damping: float >= 0, Tikhonov damping relative to the mean eigenvalue of `G`; it bounds the
            condition number by `d / damping` and the iteration count with it. Defaults to `0.01`.
        center: bool; subtract the mean `mu` and whiten with the covariance instead of `E[x x^T]`.
            Defaults to `False`, the paper's uncentered `E[x x^T]`. With a `same`-padded convolution
            after it, the bias absorbs the shift exactly only away from the borders.
        activation_factor: float > 0, the paper's `E(v_f)`. Defaults to `1.0`.
        iterations: int >= 1 or None; Newton-Schulz iterations per refresh, None for the residual stopping
            rule of `newton_schulz`. Defaults to `None`.
        refresh_dtype: `"float32"` or `"float64"`, the dtype of the iteration. Defaults to `"float32"`.
        preserve_function: bool; re-express the consumers' weights at each refresh so that the model's
            function is unchanged, where they can be. Defaults to `True`.
        max_step: float > 0 or None; the trust region: at the start of each training step, the consumers'
            previous optimizer step on `(W', b)` is shortened to at most `max_step` times the norm of
            `(W', b)` (`keras_sngd.trust_region`), i.e. each consumer's output changes by at most about
            `max_step` of its size per step. It needs the function-preserving mode (it assigns the consumers'
            weights), so it does nothing on JAX. None: no bound. Defaults to `None`; `reconstruct` sets it
            for convolutional and recurrent networks (`keras_sngd.layer_defaults`).
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor whose `axis` dimension is known.
        training: bool; update statistics and refresh only when True.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((784,)),
        keras_sngd.LocalFisher(),
        keras.layers.Dense(80, activation="relu"),
        keras_sngd.LocalFisher(),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```

    Reference:
        Liu et al., "Reconstructing Deep Neural Networks: Unleashing the Optimization Potential of Natural
        Gradient Descent" (local Fisher layers, Proposition 1, Eq. 15).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        update_every=50,
        damping=0.01,
        center=False,
        activation_factor=1.0,
        iterations=None,
        refresh_dtype="float32",
        preserve_function=True,
        max_step=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"`axis` must be an int. Received: axis={axis!r}")
        if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be a float in [0, 1). Received: momentum={momentum!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"`update_every` must be an int >= 1. Received: update_every={update_every!r}")
        if not _is_real(damping) or not damping >= 0.0:
            raise ValueError(f"`damping` must be a finite float >= 0. Received: damping={damping!r}")
        if not isinstance(center, bool):
            raise ValueError(f"`center` must be a bool. Received: center={center!r}")
        if not _is_real(activation_factor) or not activation_factor > 0.0:
            raise ValueError(
                f"`activation_factor` must be a finite float > 0. Received: activation_factor={activation_factor!r}"
            )
        if iterations is not None and (
            isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1
        ):
            raise ValueError(f"`iterations` must be None or an int >= 1. Received: iterations={iterations!r}")
        if refresh_dtype not in _REFRESH_DTYPES:
            raise ValueError(
                f"`refresh_dtype` must be one of {_REFRESH_DTYPES}. Received: refresh_dtype={refresh_dtype!r}"
            )
        self.axis = axis
        self.momentum = float(momentum)
        self.update_every = update_every
        self.damping = float(damping)
        self.center = center
        self.activation_factor = float(activation_factor)
        self.iterations = iterations
        if not isinstance(preserve_function, bool):
            raise ValueError(
                f"`preserve_function` must be a bool. Received: preserve_function={preserve_function!r}"
            )
        self.refresh_dtype = refresh_dtype
        self.preserve_function = preserve_function
        self.max_step = check_float("max_step", max_step, minimum=0.0, exclusive_minimum=True, allow_none=True)
        # The consumers' weights after the previous step (see `_bound_consumer_steps`): transient state,
        # created at the first training call and not saved, like an optimizer's.
        object.__setattr__(self, "_step_bound_state", None)
        self.supports_masking = True
        self.refresh_mode = "not traced yet"

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2 or not -rank <= self.axis < rank:
            raise ValueError(
                f"`axis`={self.axis} is not a valid axis for inputs of shape {tuple(input_shape)}."
            )
        dim = input_shape[self.axis]
        if dim is None:
            raise ValueError(
                f"LocalFisher needs a known size on `axis`={self.axis}. Received input shape "
                f"{tuple(input_shape)}."
            )
        self.input_spec = keras.InputSpec(ndim=rank, axes={self.axis: dim})

        def state(name, shape, initializer="zeros", dtype="float32"):
            return self.add_weight(
                name=name, shape=shape, initializer=initializer, dtype=dtype, trainable=False, autocast=False
            )

        self.second_moment = state("second_moment", (dim, dim))
        self.mean = state("mean", (dim,))
        self.statistics_weight = state("statistics_weight", ())
        self.inverse_root = state("inverse_root", (dim, dim), initializer="identity")
        # The mean subtracted before U when centering; it changes only at refreshes.
        self.shift = state("shift", (dim,)) if self.center else None
        self.step = state("step", (), dtype="int32")
        self.refresh_count = state("refresh_count", (), dtype="int32")
        self.failed_refresh_count = state("failed_refresh_count", (), dtype="int32")
        self.skipped_batch_count = state("skipped_batch_count", (), dtype="int32")

    def call(self, inputs, training=None):
        if training:
            inverse_root, shift = self._update(inputs)
        else:
            inverse_root = self.inverse_root.value
            shift = self.shift.value if self.center else None
        features = ops.moveaxis(inputs, self.axis, -1)
        if self.center:
            features = features - ops.cast(shift, features.dtype)
        outputs = ops.matmul(features, ops.cast(inverse_root, features.dtype))
        return ops.moveaxis(outputs, -1, self.axis)

    def consumer_bindings(self):
        """`(bindings, reason)`: how the refresh re-expresses the layers this one feeds.

        `bindings` is empty, and `reason` says why, when the refresh cannot keep the model's function:
        `preserve_function=False`, the JAX backend (its trainer drops assignments to trainable variables
        made inside the train step), or what `keras_sngd.consumers.consumer_bindings` finds in the graph.
        """
        if not self.preserve_function:
            return [], "preserve_function=False"
        if keras.backend.backend() == "jax" and self._outbound_nodes:
            return [], "the JAX trainer drops assignments to trainable variables made inside the train step"
        return consumer_bindings(self)

    def _update(self, inputs):
        """Statistics, counters and (every `update_every` steps) the refresh; returns the `U` (and the
        shift) to use in this step."""
        second_moment, mean = batch_moments(inputs, self.axis)
        moving_second_moment, moving_mean, weight, accepted_batch = update_moving_moments(
            self.second_moment.value,
            self.mean.value,
            self.statistics_weight.value,
            second_moment,
            mean,
            self.momentum,
        )
        step = self.step.value + 1
        due = ops.equal(step % self.update_every, 0)
        bindings, reason = self.consumer_bindings()
        self._note_refresh_mode(bindings, reason)
        if self.max_step is not None and bindings:
            self._bound_consumer_steps(bindings)
        old_inverse_root = self.inverse_root.value
        old_shift = self.shift.value if self.center else None

        def current():
            values = [old_inverse_root, ops.convert_to_tensor(False)]
            return tuple(values + [old_shift]) if self.center else tuple(values)

        def refresh():
            fisher = local_fisher_matrix(
                moving_second_moment, moving_mean, weight, self.center, self.activation_factor
            )
            inverse_root, root, accepted = refresh_inverse_root(
                fisher, old_inverse_root, self.damping, self.iterations, self.refresh_dtype
            )
            shift = None
            if self.center:
                shift = ops.where(accepted, moving_mean / ops.maximum(weight, 1e-30), old_shift)
            if bindings:
                # W'_new = G_new^(1/2) U_old W', so that U_new W'_new = U_old W' (DESIGN.md, PRONG).
                identity = ops.eye(old_inverse_root.shape[0], dtype="float32")
                mixing = ops.where(accepted, ops.matmul(root, old_inverse_root), identity)
            # The consumers' weights are assigned inside this branch, so that only refresh steps touch
            # them. Bindings exist only off JAX (see `consumer_bindings`), where a branch may assign.
            for binding in bindings:
                kernel = _frozen(binding.kernel)
                if self.center:
                    # b'_new = b' + W^T (mu_new - mu_old), W = U_old W' the effective kernel.
                    effective = binding.mix(old_inverse_root, kernel)
                    response = binding.shift_response(effective, shift - old_shift)
                    bias = _frozen(binding.bias)
                    input_bias = binding.input_bias(bias) + ops.cast(response, bias.dtype)
                    binding.bias.assign(binding.with_bias(bias, input_bias))
                binding.kernel.assign(binding.mix(mixing, kernel))
            values = [inverse_root, accepted]
            return tuple(values + [shift]) if self.center else tuple(values)

        # No gradient flows through a refresh: it is a change of coordinates, not part of the loss.
        values = [ops.stop_gradient(value) for value in ops.cond(due, refresh, current)]
        inverse_root, accepted = values[0], values[1]
        shift = values[2] if self.center else None
        self.second_moment.assign(moving_second_moment)
        self.mean.assign(moving_mean)
        self.statistics_weight.assign(weight)
        self.inverse_root.assign(inverse_root)
        if self.center:
            self.shift.assign(shift)
        self.step.assign(step)
        self.refresh_count.assign(self.refresh_count.value + ops.cast(accepted, "int32"))
        self.failed_refresh_count.assign(
            self.failed_refresh_count.value + ops.cast(due & ~accepted, "int32")
        )
        self.skipped_batch_count.assign(self.skipped_batch_count.value + ops.cast(~accepted_batch, "int32"))
        if self.max_step is not None and bindings:
            # The kernels this step's update starts from: after the bound and any re-expression.
            for binding, previous in zip(bindings, self._step_bound_state["previous"]):
                for variable, old in zip(_bounded_variables(binding), previous):
                    old.assign(_frozen(variable))
            self._step_bound_state["valid"].assign(1)
        return inverse_root, shift

    def _bound_consumer_steps(self, bindings):
        """The trust region: each consumer's last optimizer step, measured on its whitened kernel `W'` and
        its bias together, is shortened to at most `max_step` times their norm
        (`keras_sngd.trust_region.bounded_step`) before the layer uses them. The weights before that step
        are kept in transient variables (not saved, like an optimizer's)."""
        state = self._step_bound_state
        if state is None:
            state = {
                "previous": [
                    [keras.Variable(ops.zeros(variable.shape, variable.dtype), trainable=False,
                                    name=f"{binding.layer.name}_previous_{index}")
                     for index, variable in enumerate(_bounded_variables(binding))]
                    for binding in bindings
                ],
                "valid": keras.Variable(0, dtype="int32", trainable=False, name="previous_weights_valid"),
                "bounded_steps": keras.Variable(0, dtype="int32", trainable=False, name="bounded_step_count"),
            }
            object.__setattr__(self, "_step_bound_state", state)
        valid = ops.equal(state["valid"].value, 1)
        for binding, previous in zip(bindings, state["previous"]):
            variables = _bounded_variables(binding)
            values = [_frozen(variable) for variable in variables]
            outputs = binding.kernel.shape[-1]
            bounded, scale = bounded_step(values, [old.value for old in previous], self.max_step, outputs)
            shorten = valid & (scale < 1.0)
            for variable, value, new in zip(variables, values, bounded):
                variable.assign(ops.where(shorten, new, value))
            state["bounded_steps"].assign(state["bounded_steps"].value + ops.cast(shorten, "int32"))

    @property
    def bounded_step_count(self):
        """How many consumer steps the trust region (`max_step`) has shortened in this session (not saved)."""
        state = self._step_bound_state
        return 0 if state is None else int(state["bounded_steps"].numpy())

    def _note_refresh_mode(self, bindings, reason):
        if bindings:
            names = ", ".join(f"'{binding.layer.name}'" for binding in bindings)
            mode = f"function-preserving (re-expresses {names})"
        else:
            mode = f"replacing, the model's function moves at each refresh ({reason})"
            if self.preserve_function and mode != self.refresh_mode and reason != "no consumer layer in a model graph":
                warnings.warn(
                    f"LocalFisher '{self.name}' cannot keep the model's function across refreshes: {reason}. "
                    "It replaces G^(-1/2) like batch normalization replaces its statistics.",
                    stacklevel=3,
                )
        self.refresh_mode = mode

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "update_every": self.update_every,
                "damping": self.damping,
                "center": self.center,
                "activation_factor": self.activation_factor,
                "iterations": self.iterations,
                "refresh_dtype": self.refresh_dtype,
                "preserve_function": self.preserve_function,
                "max_step": self.max_step,
            }
        )
        return config

    def describe(self):
        """One line on this layer's state: size, steps, refreshes and failures, for logs and notebooks."""
        if not self.built:
            return f"LocalFisher '{self.name}': not built yet"
        return (
            f"LocalFisher '{self.name}': {self.inverse_root.shape[0]} features on axis {self.axis}, "
            f"step {int(self.step.numpy())}, {int(self.refresh_count.numpy())} refreshes "
            f"({int(self.failed_refresh_count.numpy())} failed, every {self.update_every} steps), "
            f"{int(self.skipped_batch_count.numpy())} non-finite batches skipped; refresh: {self.refresh_mode}"
        )


def _bounded_variables(binding):
    """The weights the trust region bounds: the consumer's kernel, and its bias if it has one."""
    return [binding.kernel] + ([binding.bias] if binding.bias is not None else [])


def _frozen(variable):
    """A variable's value with no gradient path (trainable consumer weights read inside a refresh)."""
    return ops.stop_gradient(ops.convert_to_tensor(variable))


def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
