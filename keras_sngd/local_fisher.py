"""The local Fisher layer: multiplies its input by `U`, an inverse root of the local Fisher matrix."""

import warnings

import keras
from keras import ops
from keras.src.backend.common.stateless_scope import get_stateless_scope
from keras.src.backend.common.stateless_scope import in_stateless_scope

from keras_sngd.consumers import consumer_bindings
from keras_sngd.fisher_layer import FisherLayer
from keras_sngd.handoff import CarriersLeftOut
from keras_sngd.handoff import HandoffConstraint
from keras_sngd.handoff import carrier
from keras_sngd.handoff import hand_over
from keras_sngd.handoff import is_carrier
from keras_sngd.low_rank import LowRankRoot
from keras_sngd.low_rank import apply_root
from keras_sngd.low_rank import root_times
from keras_sngd.regularization import install_effective_regularizer
from keras_sngd.refresh import FUNCTION_PRESERVING
from keras_sngd.refresh import REPLACING
from keras_sngd.refresh import RefreshMode
from keras_sngd.trust_region import bounded_step
from keras_sngd.validation import check_bool
from keras_sngd.validation import check_float

_FROZEN_ON_JAX = (
    "a consumer's kernel is not trainable: the JAX trainer keeps only the optimizer's writes to trainable "
    "kernels, and the optimizer does not update this one"
)
_NO_PREVIOUS = (
    "max_step needs state created before fit traces the train step (keras_sngd.reconstruct and "
    "keras.saving.load_model create it; for layers inserted by hand call layer.prepare_handoff() or pass "
    "keras_sngd.FunctionPreservingRefresh() to fit). Without it the trust region is off on JAX, and elsewhere "
    "it bounds each step at the start of the next one, so that the last step of a fit stays unbounded"
)


@keras.saving.register_keras_serializable(package="keras_sngd")
class LocalFisher(CarriersLeftOut, FisherLayer):
    """Local Fisher layer for structured natural gradient descent (SNGD).

    Put it right before a parameterized layer (Dense, Conv, RNN). With rows as samples it multiplies its
    input `x` by the non-trainable matrix `U`, an inverse root of the local Fisher matrix `G` of that
    input:

    ```
    y = x U,   U U^T = G^-1,   G = E(v_f) * E[x x^T]                  (paper, local Fisher matrix)
    ```

    Training the next layer's weights `W'` with plain gradient descent is then natural gradient descent
    on the effective weights `W = U W'` (paper, Proposition 1, which needs only `U U^T = G^-1`), with the
    layer-wise Fisher `G`. Features are on `axis` and statistics run over every other axis: before a Dense
    layer over the batch, before a Conv layer over the batch and every pixel (channel whitening), before
    an RNN over batch and time.

    **During training** (`training=True`, as in `model.fit`), on every call:

    ```
    S <- momentum * S + (1 - momentum) * sum(m x x^T) / sum(m)     # m: the Keras mask, 1 without one
    mu_s <- momentum * mu_s + (1 - momentum) * sum(m x) / sum(m)
    c <- momentum * c + (1 - momentum)                  # bias correction: E[x x^T] = S / c
                                    # (these three on steps 1, k + 1, 2k + 1, ... with statistics_every=k;
                                    #  adaptive_statistics doubles k while U still whitens G)
    step <- step + 1
    every `update_every` steps:
        G   = activation_factor * (S / c)               # minus (mu_s/c)(mu_s/c)^T when center=True
        G_d = G + damping * (trace(G) / d) * I
        drift = ||U^T G_d U - I||_F / sqrt(d)           # estimated from 8 probe vectors: cheap
        refresh only if drift > refresh_tolerance, or if there was no refresh yet:
            A   = U^T G_d U                             # warm start: near I once statistics settle
            A^(1/2), A^(-1/2) = newton_schulz(A)        # paper Eq. 15, float32 by default
            W'  <- A^(1/2) W'                           # each consumer's kernel, on its input axis
            b'  <- b' + (U W')^T (mu_s/c - mu)          # center=True only; then mu <- mu_s/c
            U   <- U A^(-1/2)                           # so U U^T = G_d^-1 and U_new W'_new = U_old W'
    y = x U          (y = (x - mu) U when center=True)  # with the refreshed U on a refresh step
    ```

    The refresh follows need: statistics that have settled (a layer fed raw pixels, whose statistics
    depend on the data alone) leave `U` whitening `G` up to their sampling noise, and their refreshes are
    skipped; statistics that move (the hidden layers while the network trains) are refreshed at every
    due step. `refresh_tolerance=0` refreshes at every due step. The first refresh waits `update_every`
    steps: earlier refreshes from a few batches' statistics can diverge at usual learning rates.
    `reconstruct` checks every 10 steps (`keras_sngd.layer_defaults.UPDATE_EVERY`), with the trust region
    and the stronger damping before raw pixels it also sets: checking often is cheap (the drift costs
    three `(d, d) x (d, 8)` products) and lets `U` follow moving statistics as soon as they drift past the
    tolerance. The layer's own default stays 50: without those two guards, the paper's MLP built by hand
    with `LocalFisher()` everywhere (damping 0.01 on 784 raw pixels, SGD 0.1, batch 50) diverged with 10,
    whose first refresh whitens the pixels from 500 rows, on TensorFlow and JAX alike, and trained with 20
    and 50 (`python benchmarks/wide_mlp.py --cases 80:50:0.1 --hidden 2 --variants
    by-hand-10,by-hand-20,by-hand-50`).

    The sums are taken over every replica of a data-parallel strategy before they are divided
    (`keras_sngd.distributed`), so every replica holds the same `U`. Masked positions (padding from
    `Embedding(mask_zero=True)` or `Masking`) stay out of the statistics, as in `BatchNormalization`.

    The refresh runs inside the compiled train step (`keras.ops.cond`). **Function-preserving refresh**
    (default): the layers this one feeds (found in the model graph, so also when inserted by hand or
    loaded from `.keras`) have their kernels re-expressed so that the effective weights `U W'`, and so the
    model's outputs, do not change (as in PRONG, Desjardins et al. 2015); between refreshes, SGD on `W'` is
    NGD on `W = U W'`. **Replacing refresh**: with `preserve_function=False`, or when a consumer cannot
    absorb `U` (a depthwise convolution, a layer that is not Dense/Conv/RNN/EinsumDense, a nested model),
    `U` is replaced and the function moves at each refresh, like batch normalization replacing its
    statistics; a warning says so and `refresh_mode` (a `RefreshMode(kind, reason)`) shows which mode a
    layer is in. SGD momentum slots are not re-expressed.

    **On JAX**, whose trainer drops assignments to trainable variables made inside the train step, the
    consumers' updates are handed to the optimizer (`keras_sngd.handoff`): the layer adds non-saved
    carrier variables (`overwrite_with_gradient=True`, which every Keras optimizer overwrites with their
    "gradient") and a constraint on each consumer's kernel, which the optimizer applies right after its
    update. A refresh then takes effect one step after the step that made it due (that step still uses the
    old `U`, and its update is re-expressed right after it), and the function is kept as on TensorFlow.
    `prepare_handoff()` gets a layer ready; `reconstruct` and `load_model` call it. The layer's own weight
    lists (`trainable_weights`, ...) leave the carriers out; the model's `variables` hold them. The
    optimizer's `gradient_accumulation_steps` is refused there with a ValueError, and with `max_step` on
    every backend (an accumulating optimizer merges the carriers by an elementwise maximum;
    `keras_sngd.handoff`).

    A batch with a NaN or Inf, or with every position masked, leaves the statistics unchanged and counts
    in `skipped_batch_count`; a refresh whose iteration does not converge or is not finite keeps `U` (and
    the consumers' weights) and increments `failed_refresh_count`. Until the first refresh, `U` is the
    identity and the layer changes nothing.

    **Trust region** (`max_step`, set by `reconstruct` for convolutional and recurrent networks): since
    `y` is white, the norm of a step `(dW', db)` is its effect on the layer's pre-activations, the Fisher
    norm of the step, and the norm of `(W', b)` the size of the layer's output. With `max_step` set, the
    optimizer's step on each consumer's `(W', b)` is shortened, right after it is made, to at most
    `max_step` times the norm of `(W', b)` before the step (K-FAC's update clipping, per layer, relative
    to the layer's size as LARS's trust ratio, independent of the learning rate;
    `keras_sngd.trust_region`), by a constraint on the consumer's kernel (`keras_sngd.handoff`), on every
    backend. Its state (non-saved carriers of the consumers' weights) is created by
    `prepare_handoff()`, which `reconstruct` and `load_model` call; a prepared layer's config lists those
    carriers, so that a copy built from it (`keras.models.clone_model`) creates them at build (the copy's
    weight list is the original's, for `set_weights`) and binds them at its first training call. A layer
    inserted by hand and not prepared warns; it then bounds each step at the start of the next training step instead (the last
    step of a fit stays unbounded; `bounded_step_count` counts these), and on JAX not at all.
    Why convolutional networks need it, with stronger damping: `docs/stability.md`.

    **Low rank** (`rank`; `reconstruct` passes `"auto"`, the layer's own default is a dense `U`): before
    a Dense layer with a wide input, `U` can be kept as a low-rank correction of a scaled identity, `U = c I + V diag(s) V^T` with `V` the top `r` eigenvectors of
    `G_d` and `c^-2` the mean of its other eigenvalues (`keras_sngd.low_rank`), so that `y = x U` costs
    `O(d r)` per row instead of `O(d^2)`, and a refresh (subspace iteration, warm-started from the previous
    `V`) no `(d, d) x (d, d)` product. `U U^T` is then `G_d^-1` on the top `r` directions and, elsewhere, the
    inverse of their mean: a bounded error where damping lifts the small eigenvalues to a flat floor (within
    a factor `(1 + damping) / damping`), which the drift check measures. `"auto"` uses
    `r = max(64, d // 16)` (twice that below damping 1) for inputs of rank 2 with `d >= 256` features and
    `damping >= 0.1` (so before a layer that reads raw pixels, which `reconstruct` damps by 1, and in
    convolutional networks, damped by 0.1), and a dense `U` elsewhere; `None` is always dense, and exact.
    The refresh keeps the function as the dense one does (the mixing `U_new^-1 U_old` is exact).

    **Batch leverage** (`leverage_scaling`, which `reconstruct` turns on; off by default, so that a layer
    inserted by hand holds `U U^T = G_d^-1` exactly): at a refresh, with `U_d U_d^T = G_d^-1`,

    ```
    d_eff = trace(G G_d^-1)                       # effective features; d - damping * mean * ||U_d||_F^2
    r     = d_eff / B                             # B: rows of the training batch (examples x positions)
    c     = max(1, ((1 + sqrt(r)) / 2)^2)
    U     = U_d / sqrt(c),   W' <- sqrt(c) W'     # the function is kept; U U^T = (c G_d)^-1
    ```

    and the drift is measured against `c G_d`. The consumer's white inputs make the batch's Gram matrix
    `Y Y^T / B` as large as `(1 + sqrt(r))^2` in its top direction (Marchenko-Pastur), which for `r > 1`
    (more effective features than rows: wide Dense inputs, small batches) is a step that fits each row's
    own residual and overshoots at the learning rates plain SGD takes; `c` brings it back to the size it
    has at `r = 1` (`keras_sngd.leverage`). Before convolutions and recurrent layers, whose rows are
    examples times positions, and at the paper MLP's widths and batches, `c` is 1 or close to it.
    Measured with `python benchmarks/wide_mlp.py` (10,000 real Fashion-MNIST images, 2 epochs, loss after
    each): a 784-512-512-512-10 MLP through `reconstruct` at batch 16, SGD 0.1, went from 1.96 / 0.63 to
    0.66 / 0.24 (plain SGD 0.75 / 0.50, Adam 0.68 / 0.47); at batch 64, SGD 0.3, from 1.10 / 0.80 to
    0.95 / 0.39 (plain SGD 0.98 / 0.59); the paper MLP built by hand with `update_every=10`, which gives
    NaN, trains with it (0.72 / 0.28; the `by-hand-10-leverage` variant). `c` and the batch's rows are
    saved with the layer's state (a file saved before they existed loads with `c = 1`, and its first due
    check measures `c`, keeping the function).

    **During inference** (`training=False`), and in training when the layer is frozen
    (`trainable=False`, also through a frozen enclosing model, as for `BatchNormalization`) or every
    layer it feeds is (a frozen layer takes no gradient step, so there is nothing to precondition, and its
    kernel must not be re-expressed): `y = x U`, and nothing is updated. Freezing or unfreezing takes
    effect at the next `compile`, as for any Keras layer.

    State (non-trainable, float32 also under mixed precision, saved with the model): `second_moment`
    (`S`), `mean` (`mu_s`), `statistics_weight` (`c`), `inverse_root` (`U`, dense also with a low rank),
    `shift` (`mu`, only with `center=True`), int32 counters `step`, `refresh_count`,
    `failed_refresh_count` and `skipped_batch_count`, with a low rank the factors `low_rank_basis`
    (`V`), `low_rank_scales` (`s`) and `low_rank_identity_scale` (`c`), and with `leverage_scaling` the
    float32 scalars `leverage` (the batch-leverage scale) and `batch_rows` (the last training batch's rows).

    **`activation_factor`** is the paper's `E(v_f)`, the mean derivative of the next layer's activation
    (the fraction of active units for ReLU), for you to set where you know it. It is one scalar per layer,
    so it only scales that layer's effective learning rate by `1 / activation_factor`. The defaults of it,
    `update_every`, `damping`, `momentum` and `refresh_tolerance` were chosen by measurement
    (`python benchmarks/defaults_sweep.py`, `python benchmarks/refresh_schedule.py`, see the README).

    Args:
        axis: int, the feature axis. Defaults to `-1`.
        momentum: float in [0, 1), the moving average's momentum. Defaults to `0.99`.
        update_every: int >= 1, training steps between refreshes of `U`. Defaults to `50`.
        damping: float >= 0, Tikhonov damping relative to the mean eigenvalue of `G`; it bounds the
            condition number by `d / damping` and the iteration count with it. Defaults to `0.01`.
        center: bool; subtract the mean `mu` and whiten with the covariance instead of `E[x x^T]`.
            Defaults to `False`, the paper's uncentered `E[x x^T]`. A refresh moves the shift into the
            consumer's bias (`b' <- b' + (U W')^T (mu_old - mu_new)`): a consumer without a bias, or whose
            bias does not span the response `contract(K, mu)` (an EinsumDense kernel with several output
            axes; an attention's projections; a transposed convolution), cannot keep the function
            centered, so the refresh falls back to replacing `U` with a warning. With a `same`- or
            `causal`-padded convolution after it, the bias absorbs the shift exactly only away from the
            borders, and a warning says so. `reconstruct` does not center a LocalFisher inside a
            composite layer whose inner consumer cannot absorb the shift (the report says so).
        activation_factor: float > 0, the paper's `E(v_f)`. Defaults to `1.0`.
        iterations: int >= 1 or None; Newton-Schulz iterations per refresh, None for the residual stopping
            rule of `newton_schulz`. Defaults to `None`.
        refresh_dtype: `"float32"` or `"float64"`, the dtype of the iteration. Defaults to `"float32"`.
            The refresh's float32 products are full float32 on every backend where that can be asked
            per operation (JAX, PyTorch: `keras_sngd.compiled`); TensorFlow on a GPU with TensorFloat-32
            on (its default) would round them to 10 bits, and the layer warns there: turn TensorFloat-32
            off or use `"float64"`. On JAX `"float64"` needs `jax.config.update("jax_enable_x64", True)`:
            without it the layer raises a ValueError when it is built.
        preserve_function: bool; re-express the consumers' weights at each refresh so that the model's
            function is unchanged, where they can be. Defaults to `True`.
        refresh_tolerance: float >= 0; a due refresh runs only when the estimated whitening drift
            `||U^T G_d U - I||_F / sqrt(d)` exceeds it (or before the first refresh); 0 refreshes at every
            due step. Chosen by measurement (`python benchmarks/refresh_schedule.py`). Defaults to `0.3`.
        statistics_every: int >= 1 or `"auto"`; with `k`, the moving average takes in every batch until
            the first accepted refresh, then those of steps 1, k + 1, 2k + 1, ... only: `1/k` of the statistics' cost (a `(d, d)` product per batch, as large
            as the whitening `x U` itself on a wide Dense input), for an average over `k` times as many
            steps (`momentum` applies per batch taken in). `"auto"`: 4 before a Dense layer with at least 256
            input features (rank-2 inputs), 1 elsewhere (convolutions and recurrent layers get many rows per
            batch, and their product is small next to the layer's work); see
            `keras_sngd.fisher_layer.statistics_period`. Under `tf.distribute` with several replicas
            every batch is taken in (the statistics' all-reduce cannot sit inside a conditional).
            Defaults to `"auto"`.
        adaptive_statistics: bool; let the period of the statistics follow need: it doubles after every
            drift check that finds `U` still whitening `G` (up to 16 times `statistics_every`'s period)
            and is back at that period after every refresh, and the drift is checked every `update_every`
            steps or every period, whichever is longer. For inputs whose statistics depend on the data
            alone (raw or preprocessed inputs, a frozen backbone's output): once `U` whitens them their
            statistics cost almost nothing, and a change of the data still shows within two periods. Not
            for inputs that training moves (a hidden layer's): their statistics would follow the network
            more slowly. The current period is the layer's `statistics_period` variable. `reconstruct`
            passes `True` before a Dense layer that reads at least 256 fixed features
            (`keras_sngd.layer_defaults.fixed_feature_statistics`). Defaults to `False`.
        rank: int >= 1, None or `"auto"`; keep `U` as a rank-`rank` correction of a scaled identity
            (see **Low rank** above; a rank of at least the input's size is dense). `"auto"`: `max(64, d // 16)`
            (twice that below damping 1) before a Dense layer with `d >= 256` input features and
            `damping >= 0.1`, dense elsewhere (`keras_sngd.low_rank.resolve_rank`); `reconstruct` passes it.
            Defaults to `None`: a dense `U` with `U U^T = G_d^-1` exactly.
        max_step: float > 0 or None; the trust region: each optimizer step on a consumer's `(W', b)` is
            shortened to at most `max_step` times the norm of `(W', b)` (see above; call
            `prepare_handoff()` for layers inserted by hand). It needs the function-preserving mode (it
            changes the consumers' weights). None: no bound. Defaults to `None`; `reconstruct` sets it for
            convolutional and recurrent networks (`keras_sngd.layer_defaults`).
        leverage_scaling: bool; scale each refreshed `U` by `1 / sqrt(c)`, with `c >= 1` growing with the
            ratio of the input's effective features to the training batch's rows (see **Batch leverage**
            above). Defaults to `False` (the layer holds `U` with `U U^T = G_d^-1` exactly);
            `reconstruct` passes `True`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor whose `axis` dimension is known.
        training: bool; update statistics and refresh only when True (and the layer is trainable).
        mask: optional boolean tensor of the input's shape without the feature axis; masked positions are
            left out of the statistics. Passed on unchanged.

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

    def __init__(self, *args, max_step=None, leverage_scaling=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_step = check_float("max_step", max_step, minimum=0.0, exclusive_minimum=True, allow_none=True)
        self.leverage_scaling = check_bool("leverage_scaling", leverage_scaling)
        # The consumers' weights after the previous step (see `_bound_consumer_steps`): transient state,
        # created at the first training call and not saved, like an optimizer's.
        object.__setattr__(self, "_step_bound_state", None)
        # Handing consumer updates to the optimizer (`keras_sngd.handoff`, the JAX backend): the consumers
        # of the step being traced, the values the step hands over, and per consumer kernel the carriers of
        # its (W', b) for the trust region.
        object.__setattr__(self, "_handoff_bindings", None)
        object.__setattr__(self, "_pending", None)
        object.__setattr__(self, "_previous", {})
        # Carriers a copy built from a prepared layer's config creates at build (`handoff.CARRIER_PLAN`), by
        # consumer, bound to that consumer's weights at the first call that needs them.
        object.__setattr__(self, "_planned_carriers", {})
        object.__setattr__(self, "_warned_no_previous", False)
        object.__setattr__(self, "_warned_inexact_centering", False)
        object.__setattr__(self, "_forward_root", None)
        # The consumers' bindings when they are given, not found in a graph: a LocalFisher inside a composite
        # layer's call (`keras_sngd.inner_whitening.InnerWhitening`).
        object.__setattr__(self, "_inner_bindings", None)

    def build(self, input_shape):
        super().build(input_shape)
        if self._hands_off():
            dim = self.inverse_root.shape[0]
            self.pending_flag = carrier(self, "pending_flag", ())
            if self._low_rank():
                # The mixing `U_new^-1 U_old` as the two roots' factors (`keras_sngd.low_rank.low_rank_mixing`):
                # 2 (d r + r + 1) values handed over per step instead of a dense (d, d) matrix.
                rank = self._resolved_rank
                self.pending_mixing = None
                self.pending_roots = tuple(
                    LowRankRoot(carrier(self, f"pending_{when}_basis", (dim, rank)),
                                carrier(self, f"pending_{when}_scales", (rank,)),
                                carrier(self, f"pending_{when}_identity_scale", (), "ones"))
                    for when in ("new", "old")
                )
            else:
                self.pending_mixing = carrier(self, "pending_mixing", (dim, dim), "identity")
                self.pending_roots = None
            self.pending_shift = carrier(self, "pending_shift", (dim,)) if self.center else None
        if self.max_step is not None and self.preserve_function:
            for tag, kernel_shape, bias_shape in self._carrier_plan or ():
                variables = [carrier(self, f"previous_kernel_{tag}", tuple(kernel_shape))]
                variables[0]._keras_sngd_tag = tag
                if bias_shape is not None:
                    variables.append(carrier(self, f"previous_bias_{tag}", tuple(bias_shape)))
                self._planned_carriers[tag] = variables

    def _hands_off(self):
        """Whether consumer updates go through the optimizer (`keras_sngd.handoff`): on JAX, whose trainer
        drops in-step writes to trainable weights."""
        return keras.backend.backend() == "jax" and self.preserve_function

    def prepare_handoff(self):
        """Get ready to hand consumer updates to the optimizer (`keras_sngd.handoff`).

        With `max_step` (every backend) and on JAX: installs the constraint on each consumer's kernel and,
        with `max_step`, creates the carriers of the consumers' weights that the trust region needs, so that
        the optimizer bounds each step right after making it. Call it outside the train step, once the
        model is built; `keras_sngd.reconstruct`, `keras.saving.load_model` and
        `keras_sngd.FunctionPreservingRefresh` call it for you. Otherwise a no-op.
        """
        if self.built and self.preserve_function:
            self._install_regularizers()
        if not (self.built and self.preserve_function) or (self.max_step is None and not self._hands_off()):
            return
        for binding in self.consumer_bindings()[0]:
            _install_constraint(self, binding)
            if self.max_step is not None and self._previous_carriers(binding) is None:
                tag = binding.name
                # State added after build, as Keras's own `Dense.enable_lora` does.
                self._tracker.unlock()
                try:
                    variables = [carrier(self, f"previous_kernel_{tag}", binding.kernel.shape)]
                    if binding.bias is not None:
                        variables.append(carrier(self, f"previous_bias_{tag}", binding.bias.shape))
                finally:
                    self._tracker.lock()
                self._previous[id(binding.kernel)] = variables
                variables[0]._keras_sngd_tag = tag

    def _install_regularizers(self):
        """Keep each consumer's own kernel regularizer on its effective kernel `U W'`
        (`keras_sngd.regularization`)."""
        for binding in self.consumer_bindings()[0]:
            install_effective_regularizer(self, binding)

    def effective_kernel(self, binding, kernel):
        """`U W'`: the consumer kernel value `kernel` (`W'`) with the `U` of this step's forward pass
        applied on its input axis (no gradient into `U`); the effective kernel of the plain layer."""
        forward = self._forward_root
        if forward is not None and in_stateless_scope() and get_stateless_scope() is forward[0]:
            inverse_root, root = forward[1:]
        else:
            inverse_root, root = _frozen(self.inverse_root), keras.tree.map_structure(_frozen, self._current_root())
        if root:
            return binding.mix_with(lambda flat: root_times(root, flat), kernel)
        return binding.mix(inverse_root, kernel)

    def _previous_carriers(self, binding):
        """The carriers of `binding`'s (W', b) as the forward pass read them, or None.

        Carriers planned for `binding`'s consumer (a copy of a prepared layer, `handoff.CARRIER_PLAN`) are bound to
        it here, where their shapes match its weights: no variable is created, so this may run in a trace."""
        variables = self._previous.get(id(binding.kernel))
        if variables is None:
            planned = self._planned_carriers.get(binding.name)
            shapes = [tuple(binding.kernel.shape)] + ([] if binding.bias is None else [tuple(binding.bias.shape)])
            if planned is not None and [tuple(variable.shape) for variable in planned] == shapes:
                variables = self._previous[id(binding.kernel)] = planned
                del self._planned_carriers[binding.name]
        return variables

    def load_own_variables(self, store):
        super().load_own_variables(store)
        # The model's graph is complete when a saved model's state is loaded.
        self.prepare_handoff()

    def _transform(self, inputs, inverse_root, shift, root=()):
        # The U of this forward pass, for a consumer's regularizer evaluated in the same trace (JAX runs the
        # forward pass and the loss in one stateless scope, and a refresh step's forward pass uses the old U).
        # Elsewhere (TensorFlow, PyTorch) the layer's state is what the forward pass used: nothing to keep.
        forward = None
        if in_stateless_scope():
            forward = (get_stateless_scope(), _frozen(inverse_root), keras.tree.map_structure(_frozen, root))
        object.__setattr__(self, "_forward_root", forward)
        return self._whiten(inputs, inverse_root, shift, root)

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        handover = self._pending
        object.__setattr__(self, "_pending", None)
        if handover is None and training and self.trainable and self._consumers_frozen():
            # At rest before frozen consumers: the carriers keep their values (and the flag says no
            # refresh), so that the optimizer still finds a "gradient" for each.
            carriers = [variable for variable in self.variables if is_carrier(variable) and variable.trainable]
            if carriers:
                values = [ops.zeros_like(variable.value) if variable is getattr(self, "pending_flag", None) else variable.value
                          for variable in carriers]
                handover = (carriers, values)
        if handover is not None:
            outputs = hand_over(outputs, *handover)
        return outputs

    def get_config(self):
        config = super().get_config()
        config["max_step"] = self.max_step
        config["leverage_scaling"] = self.leverage_scaling
        return config

    def _current_carrier_plan(self):
        """`[tag, kernel shape, bias shape or None]` per consumer whose trust-region carriers this layer
        holds, in the order it created them (`keras_sngd.handoff.CARRIER_PLAN`)."""
        plan = [list(entry) for entry in self._carrier_plan or ()]
        planned_tags = {entry[0] for entry in plan}
        by_kernel = {id(variables[0]): variables for variables in self._previous.values()}
        for variable in self._trainable_variables:
            variables = by_kernel.get(id(variable))
            if variables is not None and variable._keras_sngd_tag not in planned_tags:
                plan.append([variable._keras_sngd_tag, list(variable.shape),
                             list(variables[1].shape) if len(variables) > 1 else None])
        return plan

    def _consumers_frozen(self):
        bindings, _ = self._found_bindings()
        return bool(bindings) and not any(binding.trainable for binding in bindings)

    def consumer_bindings(self):
        """`(bindings, reason)`: how a refresh re-expresses the layers this one feeds.

        `bindings` is empty, and `reason` says why, when the refresh cannot keep the model's function:
        `preserve_function=False`, or what `keras_sngd.consumers.consumer_bindings` finds in the graph.
        """
        if not self.preserve_function:
            return [], "preserve_function=False"
        return self._found_bindings()

    def _found_bindings(self):
        """`(bindings, reason)` of the consumers: given (inside a composite layer), or found in the graph."""
        if self._inner_bindings is not None:
            for binding in self._inner_bindings if self.center else ():
                if binding.centering:  # as `keras_sngd.consumers` refuses such a consumer in the graph
                    return [], f"center=True, but {binding.centering}"
            return list(self._inner_bindings), None
        return consumer_bindings(self)

    def _train_step(self, inputs, mask):
        if self.preserve_function:
            self._install_regularizers()
        if self._hands_off():
            return self._train_step_handing_off(inputs, mask)
        bindings = self.consumer_bindings()[0] if self.max_step is not None else []
        if self.max_step is None and self.preserve_function:
            # Without the trust region the constraint only checks the optimizer that applies it (no bound:
            # `keras_sngd.handoff._refuse_unsupported`), which nothing else can see from the layer.
            for binding in self.consumer_bindings()[0]:
                _install_constraint(self, binding)
        prepared = bool(bindings) and all(self._previous_carriers(binding) is not None for binding in bindings)
        fallback = bool(bindings) and not prepared
        if fallback:
            self._warn_unprepared()
            self._bound_consumer_steps(bindings)
        inverse_root, shift, root = super()._train_step(inputs, mask)
        if prepared:
            # The optimizer bounds this step's update right after making it (`keras_sngd.handoff`),
            # relative to the weights it starts from: after any re-expression above.
            carriers, values = [], []
            for binding in bindings:
                _install_constraint(self, binding)
                carriers.extend(self._previous_carriers(binding))
                values.extend(_weights_now(binding))
            object.__setattr__(self, "_pending", (carriers, values))
        elif fallback:
            # The weights this step's update starts from: after the bound and any re-expression.
            for binding, previous in zip(bindings, self._step_bound_state["previous"]):
                for variable, old in zip(_bounded_variables(binding), previous):
                    old.assign(_frozen(variable))
            self._step_bound_state["valid"].assign(1)
        return inverse_root, shift, root

    def _warn_unprepared(self):
        if not self._warned_no_previous:
            object.__setattr__(self, "_warned_no_previous", True)
            warnings.warn(f"LocalFisher '{self.name}': {_NO_PREVIOUS}.", stacklevel=6)

    def _train_step_handing_off(self, inputs, mask):
        """The JAX training step: consumer updates go to the optimizer (`keras_sngd.handoff`)."""
        bindings = self.consumer_bindings()[0]
        handoff = bindings if all(binding.trainable for binding in bindings) else []
        object.__setattr__(self, "_handoff_bindings", handoff)
        for binding in handoff:
            _install_constraint(self, binding)
        return super()._train_step(inputs, mask)

    def _step_output(self, result, old_inverse_root, old_shift, old_root=()):
        bindings = self._handoff_bindings
        if not self._hands_off() or not bindings:
            return super()._step_output(result, old_inverse_root, old_shift, old_root)
        object.__setattr__(self, "_handoff_bindings", None)
        carriers, values = [self.pending_flag], [ops.cast(result.accepted, "float32")]
        if self.pending_roots is None:
            carriers.append(self.pending_mixing)
            values.append(result.mixing)
        else:
            # The refreshed and the current factors: the optimizer's constraint applies `U_new^-1 U_old`.
            for pending, root in zip(self.pending_roots, (result.low_rank, old_root)):
                carriers.extend(pending)
                values.extend(root)
        if self.center:
            carriers.append(self.pending_shift)
            values.append(ops.matmul(old_shift - result.shift, old_inverse_root))  # U_old^T (mu_old - mu_new)
        if self.max_step is not None:
            for binding in bindings:
                previous = self._previous_carriers(binding)
                if previous is None:
                    self._warn_unprepared()
                    continue
                carriers.extend(previous)
                values.extend(_weights_now(binding))
        object.__setattr__(self, "_pending", (carriers, values))
        # This step still sees the old U (its consumers hold the old W'); the new one is stored for the next.
        return old_inverse_root, old_shift, old_root

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
                                    name=f"{binding.name}_previous_{index}")
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

    def describe(self):
        line = super().describe()
        if self.built and self._hands_off() and self.refresh_mode.kind == FUNCTION_PRESERVING:
            line += "; on JAX the optimizer applies the consumers' updates (keras_sngd.handoff)"
        return line

    @property
    def bounded_step_count(self):
        """How many consumer steps the fallback trust region (a layer with `max_step` not prepared by
        `prepare_handoff()`) has shortened in this session (not saved); the optimizer-side bound is not counted."""
        state = self._step_bound_state
        return 0 if state is None else int(state["bounded_steps"].numpy())

    def _whiten(self, inputs, inverse_root, shift, root=()):
        features = ops.moveaxis(inputs, self.axis, -1)
        if shift is not None:
            features = features - ops.cast(shift, features.dtype)
        if root:
            outputs = apply_root(features, root)  # y = c x + ((x V) * s) V^T: O(d r) per row
        else:
            outputs = ops.matmul(features, ops.cast(inverse_root, features.dtype))
        return ops.moveaxis(outputs, -1, self.axis)

    def _refresh_plan(self, in_step):
        bindings, reason = self.consumer_bindings()
        if not bindings:
            return [], RefreshMode(REPLACING, reason)
        names = ", ".join(f"'{binding.name}'" for binding in bindings)
        if self.center and not all(binding.exact_centering for binding in bindings):
            names += " (exactly only away from the borders: center=True before a padded convolution)"
            self._warn_inexact_centering()
        if in_step and self._hands_off():
            if not self._handoff_bindings:
                return [], RefreshMode(REPLACING, _FROZEN_ON_JAX)
            # Re-expressed by the optimizer's update, through the constraint (`keras_sngd.handoff`): the same
            # function-preserving refresh, one step later, so the same mode as on the other backends.
            return [], RefreshMode(FUNCTION_PRESERVING, f"re-expresses {names}")
        return bindings, RefreshMode(FUNCTION_PRESERVING, f"re-expresses {names}")

    def _warn_inexact_centering(self):
        if self._warned_inexact_centering:
            return
        object.__setattr__(self, "_warned_inexact_centering", True)
        warnings.warn(
            f"LocalFisher '{self.name}' (center=True) feeds a 'same'- or 'causal'-padded convolution: a refresh "
            "moves the shift mu into the convolution's bias, which the zero-padded border positions do not see, "
            "so the refresh keeps the model's function exactly only away from the borders (outputs at the "
            "borders move). Pass center=False to keep the function everywhere, or use padding='valid'.",
            stacklevel=4,
        )

    def _reexpress(self, bindings, result, old_inverse_root, old_shift):
        # Assigned inside the refresh branch, so that only refresh steps touch the consumers' weights.
        for binding in bindings:
            kernel = _frozen(binding.kernel)
            if self.center:
                # b'_new = b' + W^T (mu_new - mu_old), W = U_old W' the effective kernel.
                effective = binding.mix(old_inverse_root, kernel)
                binding.bias.assign(binding.shifted_bias(_frozen(binding.bias), effective, old_shift - result.shift))
            binding.kernel.assign(binding.mix(result.mixing, kernel))


def _install_constraint(fisher, binding):
    """Put `HandoffConstraint` on `binding`'s kernel (once), keeping the kernel's own constraint after it."""
    constraint = binding.kernel.constraint
    if isinstance(constraint, HandoffConstraint) and constraint.fisher is fisher:
        return
    binding.kernel.constraint = HandoffConstraint(fisher, binding, previous=constraint)


def _bounded_variables(binding):
    """The weights the trust region bounds: the consumer's kernel, and its bias if it has one."""
    return [binding.kernel] + ([binding.bias] if binding.bias is not None else [])


def _weights_now(binding):
    """The consumer's bounded weights as they are now, for `hand_over` (which stops their gradients): the
    weights the optimizer's next update starts from, which the trust region measures it against."""
    return [ops.convert_to_tensor(variable) for variable in _bounded_variables(binding)]


def _frozen(variable):
    """A variable's value with no gradient path (trainable consumer weights read inside a refresh)."""
    return ops.stop_gradient(ops.convert_to_tensor(variable))
