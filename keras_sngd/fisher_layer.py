"""`FisherLayer`: the statistics and the refresh of `U` shared by `LocalFisher` and `FisherStatistics`."""

import warnings
import weakref

import keras
from keras import ops
from keras.src.backend.common.stateless_scope import get_stateless_scope
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.backend.common.variables import AutocastScope

from keras_sngd import host_schedule
from keras_sngd.compiled import shared
from keras_sngd.compiled import warn_if_tensor_float_32
from keras_sngd.consumers import NO_CONSUMER
from keras_sngd.device_scalars import scalar
from keras_sngd.distributed import in_replica_context
from keras_sngd.distributed import replicas_in_sync
from keras_sngd.handoff import without_carriers
from keras_sngd.leverage import scale_refresh
from keras_sngd.low_rank import AUTO as AUTO_RANK
from keras_sngd.low_rank import SUBSPACE_ITERATIONS
from keras_sngd.low_rank import WARM_SUBSPACE_ITERATIONS
from keras_sngd.low_rank import LowRankRoot
from keras_sngd.low_rank import initial_basis
from keras_sngd.low_rank import low_rank_refresh
from keras_sngd.low_rank import resolve_rank
from keras_sngd.refresh import NOT_TRACED
from keras_sngd.refresh import RefreshMode
from keras_sngd.refresh import RefreshResult
from keras_sngd.refresh import warm_refresh
from keras_sngd.refresh import whitening_drift
from keras_sngd.statistics import MovingMoments
from keras_sngd.statistics import accumulate_moments
from keras_sngd.statistics import local_fisher_matrix
from keras_sngd.validation import check_bool
from keras_sngd.validation import check_choice
from keras_sngd.validation import check_float
from keras_sngd.validation import check_int
from keras_sngd.width import warn_if_wide

REFRESH_DTYPES = ("float32", "float64")
AUTO = "auto"
# `statistics_every="auto"`: inputs of rank 2 (a Dense layer's: one row per example) at least this wide take
# every `_WIDE_PERIOD`-th batch; every other input takes every batch.
_WIDE_FEATURES = 256
_WIDE_PERIOD = 4
# `adaptive_statistics=True`: the period doubles after every drift check that finds `U` still whitening
# `G`, up to this many times the base period, and is back at the base after every refresh
# (`FisherLayer._next_statistics_period`).
SETTLED_FACTOR = 16


def statistics_period(statistics_every, input_shape):
    """The period `k` of the statistics for `statistics_every` (an int, or `"auto"`) and an input shape.

    `"auto"`: 4 before a Dense layer whose input has at least 256 features (rank-2 inputs: one row per
    example), 1 elsewhere. There the `(d, d)` product `x^T x` of a batch costs as much as the layer's own
    whitening `x U`, and more than the consumer's forward pass (`B d^2` against `B d h` for `h` outputs), and
    one batch adds few rows; before a convolution or a recurrent layer every pixel or time step is a row,
    the product is small next to the layer's work, and the statistics take every batch. Measured on the
    paper's MLP and four convolutional and recurrent networks (`benchmarks/RESULTS.md`, "statistics_every").
    """
    if statistics_every != AUTO:
        return statistics_every
    return _WIDE_PERIOD if len(input_shape) == 2 and input_shape[-1] >= _WIDE_FEATURES else 1


# The pure refresh computations, compiled once per shape and shared by the layers (`keras_sngd.compiled`).
_low_rank_refresh = shared(low_rank_refresh)
_warm_refresh = shared(warm_refresh)
_whitening_drift = shared(whitening_drift)
_scale_refresh = shared(scale_refresh)
# Where a conditional branch may assign variables (not JAX, whose traced branches would leak), the new U
# is written inside the refresh branch, so that steps without a refresh do not rewrite the (d, d) state.
_ASSIGN_IN_BRANCH = keras.backend.backend() != "jax"
# Reasons that hold for every layer of a process (the JAX trainer), warned about once.
_WARNED_FOR_EVERY_LAYER = set()


def _eager_under_torch_compile(function):
    """`function`, run eagerly when `torch.compile` traces it (Keras's `jit_compile=True` on PyTorch); a
    decorator, applied once when the module is imported.

    A training call's bookkeeping branches on its counters and iterates Newton-Schulz until convergence:
    traced by `torch.compile` it recompiled at every new counter value until Dynamo's recompile limit (a
    small reconstructed MLP's first two steps took 78 s against 18 s for the plain model, and its later
    steps 100 times the plain model's; `benchmarks/torch_compile.py`). Excluded from the compiled graph (`torch.compiler.disable`, a graph break)
    it runs eagerly, with the schedule read on the host (`keras_sngd.host_schedule`), and the rest of the
    model stays compiled. Elsewhere `function` itself.
    """
    if keras.backend.backend() != "torch":
        return function
    import torch

    return torch.compiler.disable(function, recursive=True)


def _check_refresh_dtype(refresh_dtype):
    """Raise a ValueError for `refresh_dtype="float64"` where the backend cannot compute in float64 (JAX
    without `jax_enable_x64`), when the layer is built rather than at its first refresh, inside `fit`."""
    if refresh_dtype != "float64" or keras.backend.backend() != "jax":
        return
    import jax

    if not jax.config.jax_enable_x64:
        raise ValueError(
            "`refresh_dtype='float64'` needs float64 arithmetic, which JAX computes only with "
            "`jax.config.update('jax_enable_x64', True)` (set before building the model); use "
            f"refresh_dtype='float32' otherwise. Received: refresh_dtype={refresh_dtype!r}"
        )


def forward_pass(layer):
    """An object that identifies the forward pass `layer` is called in: the stateless scope that the JAX
    trainer runs it in (it calls the model's `call` inside one, so that every layer call is an entry of its
    own), else Keras's call context, which the outermost `__call__` opens and closes."""
    if in_stateless_scope():
        return get_stateless_scope()
    return layer._get_call_context()


class FisherLayer(keras.layers.Layer):
    """Base of `LocalFisher` and `FisherStatistics`: the local Fisher statistics and the refresh of `U`.

    It owns the state, the statistics, the counters, the refresh decision and the refresh computation
    (see `LocalFisher` for the formulas and the arguments). A subclass says what the layer outputs and
    what a refresh does to the model, by implementing:

    - `_transform(inputs, inverse_root, shift, root)`: the output, given the `U` (and shift, and with
      `rank` its low-rank factors `root`) of this step;
    - `_refresh_plan(in_step)`: `(bindings, RefreshMode)`, the consumers a refresh re-expresses;
    - `_reexpress(bindings, result, old_inverse_root, old_shift)`: re-express them (default: nothing).

    `layer.trainable = False` (or a frozen enclosing model) makes `call` run in inference mode also
    inside `fit`, like a frozen `BatchNormalization`: no statistics, no counters, no refresh; so do frozen
    consumers (`_consumers_frozen`).
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
        refresh_tolerance=0.3,
        statistics_every="auto",
        rank=None,
        adaptive_statistics=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = check_int("axis", axis)
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0, exclusive_maximum=True)
        self.update_every = check_int("update_every", update_every, minimum=1)
        self.damping = check_float("damping", damping, minimum=0.0)
        self.center = check_bool("center", center)
        self.activation_factor = check_float("activation_factor", activation_factor, minimum=0.0,
                                             exclusive_minimum=True)
        self.iterations = check_int("iterations", iterations, minimum=1, allow_none=True)
        self.refresh_dtype = check_choice("refresh_dtype", refresh_dtype, REFRESH_DTYPES)
        self.preserve_function = check_bool("preserve_function", preserve_function)
        self.refresh_tolerance = check_float("refresh_tolerance", refresh_tolerance, minimum=0.0)
        if isinstance(statistics_every, str) and statistics_every != AUTO:
            raise ValueError(f"`statistics_every` must be an int >= 1 or 'auto'. Received: "
                             f"statistics_every={statistics_every!r}")
        self.statistics_every = (
            statistics_every if statistics_every == AUTO else check_int("statistics_every", statistics_every, minimum=1)
        )
        self._statistics_period = None  # set by `build`: `statistics_period(statistics_every, input_shape)`
        self.adaptive_statistics = check_bool("adaptive_statistics", adaptive_statistics)
        if rank != AUTO_RANK:
            try:
                rank = check_int("rank", rank, minimum=1, allow_none=True)
            except ValueError:
                raise ValueError(f"`rank` must be an int >= 1, None or 'auto'. Received: rank={rank!r}") from None
        self.rank = rank
        self._resolved_rank = None  # set by `build`: `keras_sngd.low_rank.resolve_rank`
        self.supports_masking = True
        self.refresh_mode = RefreshMode(NOT_TRACED, "")
        # Set by a callback that refreshes between steps (the JAX backend): the step then only collects.
        self._refresh_outside_step = False
        # The batch-leverage scale (`keras_sngd.leverage`); `LocalFisher` exposes it as an argument (off by
        # default; `reconstruct` turns it on).
        self.leverage_scaling = False
        # Python copies of the schedule's counters, so that eager steps decide without a device wait
        # (`keras_sngd.host_schedule`; PyTorch only).
        self._host = host_schedule.HostMirror()
        # `(weak reference to the forward pass, (U, shift, low-rank factors))` of the last training step's
        # first call: a later call within the same forward pass is not a new step (`_forward_pass`).
        object.__setattr__(self, "_step_context", None)

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2 or not -rank <= self.axis < rank:
            raise ValueError(f"`axis`={self.axis} is not a valid axis for inputs of shape {tuple(input_shape)}.")
        dim = input_shape[self.axis]
        if dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known size on `axis`={self.axis}. Received input shape "
                f"{tuple(input_shape)}."
            )
        self.input_spec = keras.InputSpec(ndim=rank, axes={self.axis: dim})
        warn_if_wide(self.name, dim)
        self._statistics_period = statistics_period(self.statistics_every, input_shape)
        warn_if_tensor_float_32(self.name, self.refresh_dtype)
        _check_refresh_dtype(self.refresh_dtype)

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
        if self.adaptive_statistics:
            # The current period of the statistics (`adaptive_statistics`).
            self.statistics_period = state("statistics_period", (), dtype="int32",
                                           initializer=keras.initializers.Constant(self._statistics_period))
        self._resolved_rank = resolve_rank(self.rank, input_shape, self.axis, self.damping)
        if self._resolved_rank is not None:
            # The factors of U = c I + V diag(s) V^T (`keras_sngd.low_rank`); U = I before the first refresh.
            basis = initial_basis(dim, self._resolved_rank)
            self.low_rank_basis = state("low_rank_basis", (dim, self._resolved_rank),
                                        initializer=lambda shape, dtype=None: ops.convert_to_tensor(basis))
            self.low_rank_scales = state("low_rank_scales", (self._resolved_rank,))
            self.low_rank_identity_scale = state("low_rank_identity_scale", (), initializer="ones")
        if self.leverage_scaling:
            # The scale `c` that divides `U` (`keras_sngd.leverage`) and the rows of the last training batch.
            self.leverage = state("leverage", (), initializer="ones")
            self.batch_rows = state("batch_rows", ())

    def _low_rank(self):
        """Whether `U` is kept as low rank plus identity (`rank` below the input's size)."""
        return self._resolved_rank is not None

    def _current_root(self):
        """The `LowRankRoot` factors of the current `U`, or `()` for a dense `U`."""
        if not self._low_rank():
            return ()
        return LowRankRoot(self.low_rank_basis.value, self.low_rank_scales.value,
                           self.low_rank_identity_scale.value)

    def call(self, inputs, training=None, mask=None):
        # Sparse inputs (`keras.Input(sparse=True)`) are densified: `x U` is dense whatever `x` is, and the
        # statistics `E[x x^T]` are read from the same dense `x`. (PyTorch has no sparse Keras inputs.)
        if keras.backend.backend() in ("tensorflow", "jax"):
            inputs = ops.convert_to_tensor(inputs, sparse=False)
        if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(inputs.dtype)):
            # Integer or boolean features (`keras.Input(dtype="int32")`, a `StringLookup`'s one-hot, which is
            # int64 at run time): Keras casts only float inputs to a layer's dtype, and in the input's own
            # dtype `U` would be truncated (`x U` with U cast to int: the function lost at the first refresh,
            # and an integer output carries no gradient). The consumer computes with them as floats (its
            # product promotes them), so the LocalFisher does too, and its output is float.
            inputs = ops.cast(inputs, self.compute_dtype)
        if training and self.trainable and not self._consumers_frozen():
            inverse_root, shift, root = self._training_call(inputs, mask)
        else:
            inverse_root, shift, root = self.inverse_root.value, self._current_shift(), self._current_root()
        return self._transform(inputs, inverse_root, shift, root)

    @_eager_under_torch_compile
    def _training_call(self, inputs, mask):
        """The statistics, counters and refresh of a training call; returns the `U`, shift and low-rank
        factors its output uses."""
        # The consumers' weights in their own dtype: under a mixed precision policy Keras reads float
        # variables inside a layer's call as casts to the compute dtype, so the refresh's re-expression
        # (and the trust region's bound) would read a bfloat16 copy, and on PyTorch assign to that
        # temporary copy, losing the write (`W' <- M W'` dropped while `U` changed: the function lost).
        with AutocastScope(None):
            context = self._forward_pass()
            if self._step_context is not None and self._step_context[0]() is context:
                # A later call of the same forward pass (a layer shared by several call sites, or a nested
                # model called twice): its batch joins the statistics, and it whitens with the `U` the
                # step's first call used. The step count, the refresh and the trust region's hand-over
                # happen once per step, at the first call.
                self._later_call_statistics(inputs, mask)
                return self._step_context[1]
            state = self._train_step(inputs, mask)
            # A weak reference: the context (on JAX the trace's stateless scope) is not kept alive.
            object.__setattr__(self, "_step_context", (weakref.ref(context), state))
            return state

    def refresh(self, only_if_drifted=False):
        """Refresh `U` now, eagerly, from the current moving statistics; returns whether it was accepted.

        The same refresh as a training step's (warm-started, guarded, function-preserving where the
        consumers allow), but outside any train step: for callbacks that refresh between steps, e.g. on
        the JAX backend (after `model.jax_state_sync()`), or by hand. Before any statistics it does
        nothing and returns False. Counts in `refresh_count` or `failed_refresh_count`.

        Args:
            only_if_drifted: bool; as a due step of training does, skip the refresh (return False) when
                there was a refresh before and the estimated drift `||U^T G_d U - I||_F / sqrt(d)` is at
                most `refresh_tolerance`. Defaults to `False` (refresh now).

        Returns:
            bool, whether the new `U` was accepted.
        """
        if not self.built:
            raise ValueError(f"{type(self).__name__} '{self.name}' is not built: call it on data first.")
        if float(ops.convert_to_numpy(self.statistics_weight.value)) <= 0.0:
            return False
        moving = MovingMoments(self.second_moment.value, self.mean.value, self.statistics_weight.value, True)
        if only_if_drifted and self.refresh_tolerance > 0 and int(ops.convert_to_numpy(self.refresh_count.value)):
            if float(ops.convert_to_numpy(self._drift(moving))) <= self.refresh_tolerance:
                if self.adaptive_statistics:
                    self.statistics_period.assign(self._next_statistics_period(True, False))
                return False
        bindings, mode = self._refresh_plan(in_step=False)
        self._set_refresh_mode(mode)
        result = self._refresh(moving, bindings, write=True)
        self._count_refresh(result.accepted, due=True)
        if self.adaptive_statistics:
            self.statistics_period.assign(self._next_statistics_period(False, True))
        return bool(ops.convert_to_numpy(result.accepted))

    # Steps of a training call.

    def _train_step(self, inputs, mask):
        """Statistics, counters and (when due) the refresh; returns the `U`, shift and low-rank factors
        (`()` for a dense `U`) to use now."""
        step = self.step.value + 1
        # On an eager backend the schedule's decisions are Python bools from host copies of the counters
        # (`keras_sngd.host_schedule`): a step that neither checks nor refreshes waits for nothing.
        host_step = self._host.read(self.step) + 1 if host_schedule.active(self.step) else None
        moving = self._collect_statistics(inputs, mask, step, host_step)
        rows = None
        if self.leverage_scaling:
            # The global batch's rows (the optimizer's step averages over all replicas' shares), as a
            # function of the batch: where branches may assign, the refresh branch computes and records it;
            # elsewhere (JAX, a refresh between steps) every step does.
            def rows():
                return ops.cast(ops.size(inputs), "float32") * float(replicas_in_sync() / inputs.shape[self.axis])

            if self._refresh_outside_step or not _ASSIGN_IN_BRANCH:
                self.batch_rows.assign(rows())
        old_inverse_root, old_shift, old_root = self.inverse_root.value, self._current_shift(), self._current_root()
        if self._refresh_outside_step:
            due = ops.convert_to_tensor(False)
            result = self._unchanged(old_inverse_root, old_shift, old_root)
        elif host_step is not None and not self._checks(step, host_step):
            # Known on the host: no check, so no refresh and no change of the adaptive period.
            self._write_state(moving, step, False, None)
            self._host.record(self.step, host_step)
            return old_inverse_root, old_shift, old_root
        else:
            bindings, mode = self._refresh_plan(in_step=True)
            self._set_refresh_mode(mode)
            check = self._checks(step, host_step)
            *result, due = self._refresh_if_due(check, moving, bindings, old_inverse_root, old_shift, old_root, rows)
            # No gradient flows through a refresh: it is a change of coordinates, not part of the loss. (Only
            # what the forward pass reads needs the stop; `hand_over` stops the mixing and the flag itself.)
            result = RefreshResult(*result)
            result = result._replace(
                inverse_root=ops.stop_gradient(result.inverse_root),
                shift=ops.stop_gradient(result.shift),
                low_rank=keras.tree.map_structure(ops.stop_gradient, result.low_rank),
            )
            if self.adaptive_statistics:
                self.statistics_period.assign(self._next_statistics_period(check, due))
        self._write_state(moving, step, due, result)
        if host_step is not None:
            self._host.record(self.step, host_step)
            # A check step has waited for the device already (the drift decides): read the counters it
            # may have changed now, so that the steps until the next check wait for nothing.
            self._host.read(self.refresh_count)
            if self.adaptive_statistics:
                self._host.read(self.statistics_period)
        return self._step_output(result, old_inverse_root, old_shift, old_root)

    def _forward_pass(self):
        return forward_pass(self)

    def _later_call_statistics(self, inputs, mask):
        """A later call of the step's forward pass (`call`): its rows join the moving statistics, with the
        step's decision whether to take the batch; no count, no refresh."""
        host_step = self._host.read(self.step) if host_schedule.active(self.step) else None
        moving = self._collect_statistics(inputs, mask, self.step.value, host_step)
        if not self._statistics_written_in_branch():
            self._assign_moments(moving)
        self._count_skipped(moving)

    def _count_skipped(self, moving):
        """Count the batch in `skipped_batch_count` when the statistics rejected it (not finite)."""
        self.skipped_batch_count.assign(self.skipped_batch_count.value + ops.cast(~moving.accepted, "int32"))

    def _checks(self, step, host_step=None):
        """Whether `step` checks for a refresh: every `update_every` steps, or, while an adaptive statistics
        period has grown past its base and `update_every`, every period (a check between two batches taken
        in would find the same drift). A Python bool with `host_step` (the step read on the host,
        `keras_sngd.host_schedule`), else a boolean tensor."""
        interval = self.update_every
        if host_step is not None:
            if self.adaptive_statistics:
                period = self._host.read(self.statistics_period)
                if period > self._statistics_period:
                    interval = max(period, interval)
            return host_step % interval == 0
        if self.adaptive_statistics:
            period = self.statistics_period.value
            interval = ops.where(period > self._statistics_period, ops.maximum(period, interval), interval)
        return ops.equal(step % interval, 0)

    def _next_statistics_period(self, checked, refreshed):
        """The statistics' period after a step (`adaptive_statistics`): the base after a refresh,
        doubled (up to `SETTLED_FACTOR` times the base) after a drift check that found no drift."""
        base = self._statistics_period
        period = self.statistics_period.value
        longer = ops.minimum(period * 2, base * SETTLED_FACTOR)
        return ops.where(refreshed, base, ops.where(checked, longer, period))

    def _collect_statistics(self, inputs, mask, step, host_step=None):
        """The moving moments after this batch (`MovingMoments`); masked rows are left out. With a period
        `k > 1` (`statistics_every`) every batch is taken in until the first accepted refresh, and after it
        only those of steps 1, k + 1, 2k + 1, ...; the others keep the moments (and, where branches may
        assign, do not rewrite them). With `host_step` the choice is made on the host
        (`keras_sngd.host_schedule`)."""
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            mask = None  # not a mask over the non-feature axes: nothing to leave out

        def collect():
            moving = accumulate_moments(
                self.second_moment.value, self.mean.value, self.statistics_weight.value, inputs,
                self.momentum, self.axis, mask,
            )
            if self._statistics_written_in_branch():
                self._assign_moments(moving)
            return tuple(moving)

        period = self._statistics_period
        if (period == 1 and not self.adaptive_statistics) or in_replica_context():
            # Under `tf.distribute` with several replicas the statistics' all-reduce is a synchronization
            # point, which TensorFlow cannot place inside a conditional: every batch is taken in there.
            return MovingMoments(*collect())

        def keep():
            return (self.second_moment.value, self.mean.value, self.statistics_weight.value, scalar(True, "bool"))

        # Every batch until the first refresh, so that it never rests on a few batches' rows.
        if host_step is not None:
            if self.adaptive_statistics:
                period = self._host.read(self.statistics_period)
            take = self._host.read(self.refresh_count) == 0 or (host_step - 1) % period == 0
            return MovingMoments(*(collect() if take else keep()))
        if self.adaptive_statistics:
            period = self.statistics_period.value
        take = ops.equal(self.refresh_count.value, 0) | ops.equal((step - 1) % period, 0)
        return MovingMoments(*ops.cond(take, collect, keep))

    def _statistics_written_in_branch(self):
        return (self._statistics_period > 1 or self.adaptive_statistics) and _ASSIGN_IN_BRANCH

    def _assign_moments(self, moving):
        self.second_moment.assign(moving.second_moment)
        self.mean.assign(moving.mean)
        self.statistics_weight.assign(moving.weight)

    def _refresh_if_due(self, check, moving, bindings, old_inverse_root, old_shift, old_root=(), rows=None):
        """`(*RefreshResult, due)`: the refresh when due, else the unchanged state.

        Due: on the steps that check (`check`, from `_checks`), if there was no refresh yet or `U` has drifted
        from whitening `G` by more than `refresh_tolerance` (always, with tolerance 0). One conditional per
        step: the drift estimate and the refresh's own conditional run only on the steps that check.
        """

        def unchanged():
            return (*self._unchanged(old_inverse_root, old_shift, old_root), ops.convert_to_tensor(False))

        def refreshed(fisher=None):
            result = self._refresh(moving, bindings, write=_ASSIGN_IN_BRANCH, fisher=fisher, rows=rows)
            if _ASSIGN_IN_BRANCH:
                # The counters change only here: steps without a refresh do not rewrite them.
                self._count_refresh(result.accepted, due=True)
            return (*result, ops.convert_to_tensor(True))

        if self.refresh_tolerance == 0:
            return ops.cond(check, refreshed, unchanged)

        def checked():
            # One `G` for the drift and the refresh. A NaN drift (no statistics yet) also refreshes, and the
            # refresh then counts its failure.
            fisher = self._local_fisher(moving)
            due = ops.equal(self.refresh_count.value, 0) | ~(self._drift(moving, fisher) <= self.refresh_tolerance)
            return ops.cond(due, lambda: refreshed(fisher), unchanged)

        return ops.cond(check, checked, unchanged)

    def _local_fisher(self, moving):
        """`G` from the moving moments (`keras_sngd.statistics.local_fisher_matrix`)."""
        return local_fisher_matrix(moving.second_moment, moving.mean, moving.weight, self.center,
                                   self.activation_factor)

    def _drift(self, moving, fisher=None):
        """The estimated whitening drift `||U^T G_d U - I||_F / sqrt(d)` of the current `U` for `moving`
        (or for its `G`, `fisher`, when given)."""
        if fisher is None:
            fisher = self._local_fisher(moving)
        if self.leverage_scaling:
            fisher = fisher * self.leverage.value  # U whitens c G (`keras_sngd.leverage`)
        return _whitening_drift(fisher, self.inverse_root.value, self.damping)

    def _refresh(self, moving, bindings, write, fisher=None, rows=None):
        """The refresh computation and the consumers' re-expression; returns a `RefreshResult`, and with
        `write` also assigns the new `U` (and shift). `fisher`: `G` of `moving` when already computed;
        `rows`: a function giving the training batch's rows for the batch-leverage scale (None: the
        recorded `batch_rows`)."""
        old_inverse_root, old_shift = self.inverse_root.value, self._current_shift()
        if fisher is None:
            fisher = self._local_fisher(moving)
        if self._low_rank():
            old_root = self._current_root()
            # From the random start before the first accepted refresh, from the previous basis after it.
            iterations = ops.where(ops.equal(self.refresh_count.value, 0), SUBSPACE_ITERATIONS,
                                   WARM_SUBSPACE_ITERATIONS)
            accepted, inverse_root, mixing, root = _low_rank_refresh(
                fisher, old_inverse_root, old_root.basis, self.damping, iterations, self.refresh_dtype
            )
            root = LowRankRoot(*(ops.where(accepted, new, old) for new, old in zip(root, old_root)))
            result = RefreshResult(inverse_root, mixing, ops.zeros_like(self.mean.value), accepted,
                                   ops.cast(iterations, "int32"), root)
        else:
            result = _warm_refresh(fisher, old_inverse_root, self.damping, self.iterations, self.refresh_dtype)
        if self.leverage_scaling:
            if rows is None:
                rows = self.batch_rows.value
            else:
                rows = rows()
                if write:
                    self.batch_rows.assign(rows)
            result = self._scale_for_leverage(result, fisher, rows)
        if self.center:
            mean = moving.mean / ops.maximum(moving.weight, 1e-30)
            result = result._replace(shift=ops.where(result.accepted, mean, old_shift))
        if bindings:
            self._reexpress(bindings, result, old_inverse_root, old_shift)
        if write:
            self._assign_root(result)
        return result

    def _scale_for_leverage(self, result, fisher, rows):
        """`result` with `U` divided by `sqrt(c)` and the mixing multiplied by it, `c` the batch-leverage
        scale of the accepted `U_d` (`keras_sngd.leverage.scale_refresh`), so that `U W'` is unchanged; a
        rejected refresh keeps the old `U` and `c`."""
        inverse_root, mixing, low_rank, scale = _scale_refresh(
            fisher, result.inverse_root, result.mixing, result.low_rank, result.accepted, rows,
            self.leverage.value, self.damping,
        )
        return result._replace(inverse_root=inverse_root, mixing=mixing, low_rank=low_rank, leverage=scale)

    def _assign_root(self, result):
        """Write `U`, the shift, the low-rank factors and the leverage scale of `result`."""
        self.inverse_root.assign(result.inverse_root)
        if self.leverage_scaling:
            self.leverage.assign(result.leverage)
        if self.center:
            self.shift.assign(result.shift)
        if self._low_rank():
            self.low_rank_basis.assign(result.low_rank.basis)
            self.low_rank_scales.assign(result.low_rank.scales)
            self.low_rank_identity_scale.assign(result.low_rank.identity_scale)

    def _unchanged(self, inverse_root, shift, root=()):
        dim = inverse_root.shape[0]
        return RefreshResult(
            inverse_root=inverse_root,
            mixing=ops.eye(dim, dtype="float32"),
            shift=shift if self.center else ops.zeros((dim,), "float32"),
            accepted=ops.convert_to_tensor(False),
            iterations=ops.convert_to_tensor(0, "int32"),
            low_rank=root,
            leverage=self.leverage.value if self.leverage_scaling else (),
        )

    def _write_state(self, moving, step, due, result):
        if not self._statistics_written_in_branch():
            self._assign_moments(moving)
        if not _ASSIGN_IN_BRANCH:
            self._assign_root(result)
        self.step.assign(step)
        if not _ASSIGN_IN_BRANCH:
            # (Where branches may assign, the refresh branch counts; a step with the refresh outside it
            # never refreshes, so nothing is counted there.)
            self._count_refresh(result.accepted, due)
        self._count_skipped(moving)

    def _count_refresh(self, accepted, due):
        """Count a refresh: accepted in `refresh_count`, due but rejected in `failed_refresh_count`."""
        accepted = ops.convert_to_tensor(accepted)
        self.refresh_count.assign(self.refresh_count.value + ops.cast(accepted, "int32"))
        failed = ops.logical_and(due, ops.logical_not(accepted))
        self.failed_refresh_count.assign(self.failed_refresh_count.value + ops.cast(failed, "int32"))

    def _current_shift(self):
        return self.shift.value if self.center else None

    def _set_refresh_mode(self, mode):
        if (
            mode.kind == "replacing"
            and self.preserve_function
            and mode != self.refresh_mode
            and mode.reason != NO_CONSUMER
            and mode.reason not in _WARNED_FOR_EVERY_LAYER
        ):
            if "JAX trainer" in mode.reason:
                # Every LocalFisher of the model would say the same: once per process is enough.
                _WARNED_FOR_EVERY_LAYER.add(mode.reason)
            warnings.warn(
                f"{type(self).__name__} '{self.name}' cannot keep the model's function across refreshes: "
                f"{mode.reason}. It replaces G^(-1/2) like batch normalization replaces its statistics.",
                stacklevel=4,
            )
        self.refresh_mode = mode

    # Hooks for subclasses.

    def _consumers_frozen(self):
        """Whether the layers this one feeds are all frozen, so that training has nothing to precondition
        and the layer runs in inference mode (default: never)."""
        return False

    def _transform(self, inputs, inverse_root, shift, root=()):
        """The output for `U` (dense `inverse_root`, or its `LowRankRoot` factors `root` when not `()`)."""
        raise NotImplementedError

    def _refresh_plan(self, in_step):
        raise NotImplementedError

    def _reexpress(self, bindings, result, old_inverse_root, old_shift):
        """Re-express the consumers' weights for `result` (`U_new W'_new = U_old W'`). Default: nothing."""

    def _step_output(self, result, old_inverse_root, old_shift, old_root=()):
        """The `(U, shift, low-rank factors)` this training step's output uses, given the step's refresh
        `result` (the unchanged state without one). Default: the refreshed ones."""
        return result.inverse_root, result.shift if self.center else None, result.low_rank

    # Keras layer API.

    def save_own_variables(self, store):
        # The state in creation order (what a plain `Layer` saves): transient carriers are left out.
        for index, variable in enumerate(self._saved_variables()):
            store[f"{index}"] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        if self.leverage_scaling and len(store.keys()) == len(variables) - 2:
            # A file saved before the batch-leverage scale existed: its state is everything else (the scale
            # and the batch's rows come last); they start from c = 1 and no rows, and the first due check
            # measures them, keeping the function.
            variables = variables[:-2]
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects {len(variables)} saved variables, the file has "
                f"{len(store.keys())}."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[f"{index}"])

    def _saved_variables(self):
        return without_carriers(self._trainable_variables + self._non_trainable_variables)

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
                "refresh_tolerance": self.refresh_tolerance,
                "statistics_every": self.statistics_every,
                "adaptive_statistics": self.adaptive_statistics,
                "rank": self.rank,
            }
        )
        return config

    def describe(self):
        """One line on this layer's state: size, steps, refreshes and failures, for logs and notebooks."""
        if not self.built:
            return f"{type(self).__name__} '{self.name}': not built yet"
        shape = "" if not self._low_rank() else f" (U of rank {self._resolved_rank} plus identity)"
        return (
            f"{type(self).__name__} '{self.name}': {self.inverse_root.shape[0]} features on axis {self.axis}{shape}, "
            f"step {int(self.step.numpy())}, {int(self.refresh_count.numpy())} refreshes "
            f"({int(self.failed_refresh_count.numpy())} failed; checked every {self.update_every} steps"
            f"{'' if self.refresh_tolerance == 0 else f', refreshed above drift {self.refresh_tolerance:g}'}), "
            f"{int(self.skipped_batch_count.numpy())} non-finite batches skipped; refresh: {self.refresh_mode}"
            + self._describe_leverage()
        )

    def _describe_leverage(self):
        if not self.leverage_scaling:
            return ""
        scale, rows = float(self.leverage.numpy()), float(self.batch_rows.numpy())
        if scale == 1.0:
            return "; batch-leverage scale 1"
        return f"; batch-leverage scale {scale:.3g} (U divided by its root: more effective features than the {rows:g} rows)"
