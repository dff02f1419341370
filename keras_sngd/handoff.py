"""Consumer updates handed to the optimizer: the trust region (every backend) and, on JAX, the refresh.

Two things a `LocalFisher` does to the layers it feeds belong right after the optimizer's update: the
trust region (`max_step`) bounds that update, and it must act on the update of the step itself (bounding
it at the start of the next step would leave the last step of a fit unbounded). And the JAX trainer runs
the train step as a pure function of the model's variables: a layer may update its own non-trainable
state there, but assignments to trainable variables (the consumers' kernels) are dropped; only the
optimizer's update writes them, so there the refresh's re-expression must go through the optimizer too.
A LocalFisher hands both to the optimizer, through two mechanisms that every Keras optimizer supports
inside its compiled update, on every backend:

- **Carriers**: trainable variables created with `overwrite_with_gradient=True` (Keras's mechanism for the
  scale history of float8 layers). An optimizer overwrites such a variable with its "gradient", and leaves
  it out of momentum, clipping, loss scaling and weight decay. An identity with a custom gradient on the
  LocalFisher's output returns, as those gradients, the values to hand over:

  ```
  pending_flag    <- 1 if this step refreshed U, else 0                              (JAX only)
  pending_mixing  <- M = A^(1/2), the consumer's re-expression for this refresh (I without one)  (JAX)
                     (a low-rank U hands over the factors of U_new and U_old instead, `pending_roots`,
                     and the constraint applies M = U_new^-1 U_old from them: keras_sngd.low_rank)
  pending_shift   <- U_old^T (mu_old - mu_new)              (JAX, center=True only)
  previous_i      <- the consumer's (W', b) as this step's forward pass read them   (max_step only)
  ```

- **A constraint** on each consumer's kernel (`variable.constraint`, which every Keras optimizer applies
  right after its update): with `W'_upd, b_upd` the optimizer's result,

  ```
  W'_upd, b_upd <- bounded_step((W'_upd, b_upd), previous, max_step)   # the trust region (max_step)
  if pending_flag:                                                      # JAX only
      b_upd <- b_upd - contract(W'_upd, pending_shift)                  # centering (keras_sngd.binding)
      W'_upd <- M W'_upd                                                # re-expression
  ```

  (the user's own kernel constraint, if any, runs last).

On JAX, on a refresh step the forward pass keeps the old `U` (the consumer still holds the old `W'`); the new `U`
is stored for the next step, and the optimizer's update, made in the old coordinates, is re-expressed
right after it: `U_new (M W'_upd) = U_old W'_upd`, so the model's function is kept and from the next
step SGD on `W'` is NGD with the new `G`. The refresh thus takes effect one step after the one that made
it due, as with a refresh between steps (`keras_sngd.FunctionPreservingRefresh`). The trust region bounds
the optimizer's step in the same step it is made.

The per-consumer carriers of the trust region have the consumers' shapes, so they can only be created once
the model's graph is known and before the train step is traced (no variable can be created inside it):
`keras_sngd.reconstruct`, loading a saved model, and `FunctionPreservingRefresh` create them; for layers
inserted by hand, call `LocalFisher.prepare_handoff()` (or pass that callback) before `fit`. Without
them, the trust region is off on JAX, and elsewhere falls back to bounding each step at the start of the
next one (with a warning).

Not supported: the optimizer's `gradient_accumulation_steps`. An accumulating Keras optimizer merges the
overwritten values of a window of steps by an elementwise `maximum` (made for float8 scale histories),
from zeros: the carriers then hold `max(W', 0)`, not `W'`, and the bound pulled the kernel toward it
(SGD(0) moved a small model's outputs by about their own size, on TensorFlow and JAX). The constraint
raises a ValueError naming the way out when the optimizer that applies it accumulates: on TensorFlow
and PyTorch, `max_step=None` (no trust region; the refresh keeps the function there without the
optimizer); on JAX, no accumulation. Nor is the optimizer's `use_ema`: a moving average of the whitened
kernels `W'` mixes the coordinates of different refreshes, and copying it into the model changes the
model's function; the constraint (installed even without the trust region, where it only checks the
optimizer) refuses it on every backend.
"""

import inspect

import keras
from keras import ops

from keras_sngd.compiled import full_float32_products
from keras_sngd.low_rank import LowRankRoot
from keras_sngd.low_rank import low_rank_mixing
from keras_sngd.trust_region import bounded_step


def carrier(layer, name, shape, initializer="zeros"):
    """A float32 variable an optimizer overwrites with its gradient (not saved: see `LocalFisher`)."""
    variable = layer.add_weight(
        name=name, shape=shape, initializer=initializer, dtype="float32", trainable=True, autocast=False,
        overwrite_with_gradient=True,
    )
    variable._keras_sngd_carrier = True
    return variable


def is_carrier(variable):
    """Whether `variable` is a carrier (made by `carrier`): transient, never saved or copied."""
    return getattr(variable, "_keras_sngd_carrier", False)


def without_carriers(variables):
    """`variables` without the carriers: a layer's own state and parameters."""
    return [variable for variable in variables if not is_carrier(variable)]


# The config key under which a prepared layer lists the carriers it created after build (what
# `CarriersLeftOut._current_carrier_plan` returns). A copy built from the config (`keras.models.clone_model`,
# `keras.saving.load_model`) finds the list in `_carrier_plan`, creates the same carriers at build, so that
# its weight list is the original's (`get_weights`/`set_weights` between the two), and binds them at its
# first training call, without the "not prepared" fallback.
CARRIER_PLAN = "carrier_plan"


class CarriersLeftOut:
    """Mixin for a layer holding carriers: they are trainable only so that the optimizer overwrites them, so
    they are transport, not parameters of the layer, whose own weight lists leave them out (a model's
    `variables`, which its trainer and optimizer use, still hold them). Its config lists the carriers it
    created after build (`CARRIER_PLAN`), and a copy built from that config gets the list as
    `_carrier_plan` (None without one)."""

    _carrier_plan = None

    def get_config(self):
        config = super().get_config()
        plan = self._current_carrier_plan()
        if plan:
            config[CARRIER_PLAN] = plan
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        plan = config.pop(CARRIER_PLAN, None)
        layer = super().from_config(config)
        object.__setattr__(layer, "_carrier_plan", plan or None)
        return layer

    def _current_carrier_plan(self):
        """The JSON-serializable list of the carriers this layer holds beyond its build (default: the plan it
        was built from)."""
        return self._carrier_plan

    @property
    def trainable_weights(self):
        return without_carriers(super().trainable_weights)

    @property
    def trainable_variables(self):
        return without_carriers(super().trainable_variables)

    @property
    def non_trainable_weights(self):
        return without_carriers(super().non_trainable_weights)

    @property
    def non_trainable_variables(self):
        return without_carriers(super().non_trainable_variables)


def hand_over(outputs, carriers, values):
    """`outputs` unchanged, with the gradient of each carrier variable set to the matching value.

    Args:
        outputs: the tensor whose identity carries the values (any shape).
        carriers: list of carrier variables.
        values: list of tensors, one per carrier, of its shape (cast to float32).

    Returns:
        `outputs`, through an identity whose backward pass returns the upstream gradient for `outputs` and
        `values` as the gradients of `carriers`.
    """
    if len(values) != len(carriers):
        raise ValueError(f"`values` must give one value per carrier: {len(values)} values, {len(carriers)} carriers.")
    values = [ops.stop_gradient(ops.cast(value, "float32")) for value in values]

    @ops.custom_gradient
    def identity(outputs, *state):
        def grad(*args, upstream=None, variables=None):
            if upstream is None:
                (upstream,) = args
            return (upstream, *values)

        return outputs, grad

    # The carriers enter as tensors read from the variables, so their "gradients" are the values above.
    return identity(outputs, *(ops.convert_to_tensor(variable) for variable in carriers))


def user_constraint(variable):
    """The user's own constraint on `variable`, or None: the constraints keras-sngd installs (a
    LocalFisher's `HandoffConstraint`, a StepBound's `StepBoundConstraint`, marked `installed_by_sngd`) are
    looked through to the constraint they wrap."""
    constraint = getattr(variable, "constraint", None)
    while getattr(constraint, "installed_by_sngd", False):
        constraint = constraint.previous
    return constraint


class HandoffConstraint(keras.constraints.Constraint):
    """The constraint a `LocalFisher` installs on a consumer's kernel (see the module docstring).

    Args:
        fisher: the LocalFisher.
        binding: the consumer's `keras_sngd.binding.Binding`.
        previous: the kernel's constraint before this one (applied last), or None.
    """

    installed_by_sngd = True

    def __init__(self, fisher, binding, previous=None):
        self.fisher = fisher
        self.binding = binding
        self.previous = previous

    def __call__(self, kernel):
        fisher, binding = self.fisher, self.binding
        _refuse_unsupported(fisher, _calling_optimizer())
        kernel = ops.convert_to_tensor(kernel)
        bias = None if binding.bias is None else ops.convert_to_tensor(binding.bias)
        previous = fisher._previous_carriers(binding)
        if previous is not None and fisher.max_step is not None:
            values = [kernel] + ([bias] if bias is not None else [])
            bounded, _ = bounded_step(values, [ops.convert_to_tensor(v) for v in previous], fisher.max_step,
                                      binding.kernel.shape[-1])
            kernel = bounded[0]
            bias = bounded[1] if bias is not None else None
            bias_changed = bias is not None
        else:
            bias_changed = False
        if fisher._hands_off() and not fisher._refresh_outside_step:
            # The refresh's re-expression (JAX; elsewhere it happened inside the forward pass). Not traced
            # while `FunctionPreservingRefresh` refreshes between steps (no step refreshes then, and each
            # train function is traced for one of the two): that step holds no conditional.
            flag = ops.convert_to_tensor(fisher.pending_flag) > 0.5
            if fisher.center and bias is not None:
                shift = ops.convert_to_tensor(fisher.pending_shift)
                bias = ops.where(flag, binding.shifted_bias(bias, kernel, shift), bias)
                bias_changed = True
            if fisher.pending_roots is None:
                mixing = ops.convert_to_tensor(fisher.pending_mixing)

                def mixed():
                    return binding.mix(mixing, kernel)
            else:
                new_root, old_root = (LowRankRoot(*(ops.convert_to_tensor(v) for v in root))
                                      for root in fisher.pending_roots)

                def mixed():
                    return binding.mix_with(lambda flat: low_rank_mixing(new_root, old_root, flat), kernel)

            # Only refresh steps pay for the product; in full float32 (a TensorFloat-32 product would
            # round the kernel's values, not only the mixing's).
            with full_float32_products():
                kernel = ops.cond(flag, mixed, lambda: kernel)
        if bias_changed:
            binding.bias.assign(ops.cast(bias, binding.bias.dtype))
        if self.previous is not None:
            kernel = self.previous(kernel)
        return kernel

    def get_config(self):
        # Installed on the variable only (not in the layer's config): nothing to serialize.
        return {}


def _calling_optimizer():
    """The Keras optimizer whose `apply` is calling the constraint, or None.

    A constraint is called with the variable only (`variable.constraint(variable)` in
    `Optimizer.apply`), so the optimizer is found on the call stack: the nearest caller frame whose `self`
    is a `keras.optimizers.Optimizer`, within a few frames.
    """
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(4):
            if caller is None:
                return None
            candidate = caller.f_locals.get("self")
            if isinstance(candidate, keras.optimizers.Optimizer):
                return candidate
            caller = caller.f_back
        return None
    finally:
        del frame


def _refuse_unsupported(fisher, optimizer):
    """Raise a ValueError if `optimizer` averages the weights (`use_ema`) or accumulates gradients where the
    layer's updates go through it (see the module docstring)."""
    if getattr(optimizer, "use_ema", False):
        raise ValueError(
            f"LocalFisher '{fisher.name}' cannot work with the optimizer's use_ema=True: each refresh "
            "re-expresses the whitened kernels in new coordinates (W' <- M W', keeping U W'), so a moving "
            "average of W' mixes coordinate systems, and copying it into the model at the end of fit changes "
            "the model's function (through SGD(0) a small MLP's outputs moved by 10 times their size; a "
            "trained one's accuracy fell from 0.87 to 0.59). Train without use_ema, or keep averages of the "
            "folded model's weights (keras_sngd.fold) yourself."
        )
    steps = getattr(optimizer, "gradient_accumulation_steps", None)
    if not steps or (fisher.max_step is None and not fisher._hands_off()):
        return
    if fisher._hands_off():
        way_out = "train without gradient_accumulation_steps on the JAX backend"
    else:
        way_out = ("pass max_step=None to the LocalFishers (reconstruct(..., local_fisher_arguments="
                   "{'max_step': None})) to train without the trust region")
    raise ValueError(
        f"LocalFisher '{fisher.name}' cannot work with the optimizer's gradient_accumulation_steps="
        f"{steps!r}: its {'trust region and function-preserving refresh go' if fisher._hands_off() else 'trust region goes'} "
        "through variables the optimizer overwrites with their 'gradient', and an accumulating Keras "
        "optimizer merges those by an elementwise maximum over the window, which would move the consumers' "
        f"kernels toward wrong values. Either {way_out}, or use a larger batch instead of accumulation."
    )
