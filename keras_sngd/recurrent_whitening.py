"""`RecurrentWhitening`: a LocalFisher on the state an RNN's recurrent kernel reads.

A `LocalFisher` before an LSTM, GRU or SimpleRNN whitens the layer's input `x_t`, which its input kernel
reads. The recurrent kernel reads the previous state instead, inside the layer's loop over time:

```
z_t = x_t W + h_(t-1) R + b            (per gate; LSTM, GRU and SimpleRNN alike)
```

and the model graph that `reconstruct` rewrites does not reach `h_(t-1)`. `RecurrentWhitening` wraps the
RNN layer (under its name) and gives the recurrent kernel the paper's reconstruction too: the layer keeps
`R'` as its variable and computes with the effective kernel

```
R = U_h R',      U_h U_h^T = G_h^-1,      G_h = E[h_(t-1) h_(t-1)^T]  (over the batch and the time steps)
```

which is what whitening `h_(t-1)` before the product would do (`(h U_h) R' = h (U_h R')`), without
touching the state the gates carry forward. As for any consumer, plain SGD on `R'` is then natural
gradient descent on `R` for the Fisher's input side (Proposition 1): `grad_R' = U_h^T grad_R`, so the
step on `R` is `U_h U_h^T grad_R = G_h^-1 grad_R`.

`U_h` is held by an ordinary `LocalFisher` with the recurrent kernel as its one consumer (given to it, not
found in a graph): the same moving statistics, warm-started refresh, drift check, trust region on the
step of `R'` and function-preserving re-expression `R'_new = M R'_old` (with `U_new M = U_old`, so that `U_new R'_new =
U_old R'_old`), on every backend (on JAX the optimizer applies the re-expression, `keras_sngd.handoff`).
Its statistics come from the states of the training call itself: during training the wrapper runs the
RNN with `return_sequences=True` (the layer's own setting is restored at once, and its output sliced back
to what the layer returns), and the LocalFisher takes in the rows

```
h_(t-1), t = 1..T:   [h_0, h_1, ..., h_(T-1)]       (h_0: the initial state, zeros by default)
```

weighted by the layer's mask where it has one (a masked step does not use `h_(t-1)`). The LocalFisher's
own output is only read for these statistics, so its hand-over to the optimizer (`keras_sngd.handoff`)
rides on what the layer returns: a zero that depends on it (never NaN) is added to the output and to each
returned state (`return_state=True`: a sequence-to-sequence encoder is read only through its states;
without the states' share the trust region measured the encoder's steps from stale carriers and shrank its
`R'` to zero). The hand-over's gradient returns its values once however many of these paths reach it.
A training step
therefore computes the RNN with the `U_h` from before the step's statistics; a refresh due in that step
(which needs those statistics) takes effect from the next step, as a refresh always does on JAX. On
TensorFlow and PyTorch the refresh re-expresses `R'` within that step, after the forward pass, so the
optimizer applies that one step's gradient, `U_old^T grad_R`, to `R'_new`: the step on `R` is
`U_new U_old^T grad_R` instead of `U_new U_new^T grad_R`, which differ by how far the warm-started refresh
moved `U` (the trust region bounds the step either way).

Which layers: LSTM, GRU and SimpleRNN, `RNN` with an LSTMCell, GRUCell or SimpleRNNCell, and
`Bidirectional` of those (one LocalFisher per direction: each has its own states). Not: stacked cells
(`RNN(StackedRNNCells)`: the inner cells' states never leave the loop), other cells, ConvLSTM (its
recurrent kernel is a convolution over the state's channels; not done), and frozen layers.

Measured on real Fashion-MNIST (8,192 images, batch 64, 3 epochs, `SGD(lr)` at lr 0.3 / 0.1 / 0.03 /
0.01, final training loss; `python benchmarks/architectures.py --models gru_rows --runs ...` and
`python benchmarks/convnets.py --part training --models lstm_rows`): a GRU(64) over the image rows
0.567 / 0.699 / 0.999 / 1.245 with the recurrent kernel plain, 0.467 / 0.448 / 0.520 / 0.651 with the
state whitened (Adam's best 0.538); an LSTM(64) 0.501 / 0.540 / 0.634 / 0.854 before, 0.478 / 0.471 /
0.454 / 0.509 now (Adam's best 0.568).

Inference computes `R = U_h R'` once per call (one `(units, units)` product); `keras_sngd.fold` writes it
into the plain layer's recurrent kernel, so the folded model costs exactly what the original does.
"""

import keras
from keras import ops

from keras_sngd.binding import Binding
from keras_sngd.binding import input_cell
from keras_sngd.local_fisher import LocalFisher
from keras_sngd.low_rank import root_times

_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)
STATE = "state"


def recurrent_layers(layer):
    """The RNN layers of `layer` whose recurrent kernels `RecurrentWhitening` whitens: `[layer]` for an RNN
    with an LSTMCell, GRUCell or SimpleRNNCell, its two directions for a `Bidirectional` of one; else `[]`."""
    if isinstance(layer, keras.layers.Bidirectional):
        directions = [layer.forward_layer, layer.backward_layer]
        return directions if all(recurrent_layers(direction) for direction in directions) else []
    if isinstance(layer, keras.layers.RNN) and isinstance(layer.cell, _CELLS):
        return [layer]
    return []


def state_reason(layer):
    """None if `RecurrentWhitening` can whiten `layer`'s recurrent state, else why not."""
    if isinstance(layer, keras.layers.Bidirectional):
        for direction in (layer.forward_layer, layer.backward_layer):
            reason = state_reason(direction)
            if reason is not None:
                return f"its {'forward' if direction is layer.forward_layer else 'backward'} layer: {reason}"
        return None
    if not isinstance(layer, keras.layers.RNN):
        return f"{type(layer).__name__} is not a recurrent layer"
    cell = layer.cell
    if isinstance(cell, keras.layers.StackedRNNCells):
        return "stacked cells: the inner cells' states, which their recurrent kernels read, never leave the loop"
    if not isinstance(cell, _CELLS):
        return (f"a {type(cell).__name__}: only LSTMCell, GRUCell and SimpleRNNCell have a known recurrent "
                "kernel")
    if not layer.built:
        return "not built"
    if not (layer.trainable and cell.recurrent_kernel.trainable):
        return "frozen (trainable=False): it takes no gradient step, so there is nothing to precondition"
    return None


def state_binding(layer, label=STATE):
    """The `Binding` of the RNN `layer`'s recurrent kernel on the state it reads (no bias: a LocalFisher on
    the state is not centered)."""
    cell = layer.cell
    return Binding(layer, cell.recurrent_kernel, 0, -1, None, centering="the recurrent kernel has no bias of its own",
                   label=label)


@keras.saving.register_keras_serializable(package="keras_sngd")
class RecurrentWhitening(keras.layers.Wrapper):
    """An RNN layer whose recurrent kernel reads a whitened state: `R = U_h R'` (see the module docstring).

    `keras_sngd.reconstruct` wraps each LSTM, GRU and SimpleRNN layer (and `Bidirectional` of one) so, under
    the layer's own name, after putting the usual LocalFisher before its input; `keras_sngd.fold` turns it
    back into the plain layer with `R = U_h R'` written into its recurrent kernel. A LocalFisher before the
    wrapper sees through it to the RNN's input kernel.

    Args:
        layer: an LSTM, GRU, SimpleRNN, `RNN` of an LSTMCell/GRUCell/SimpleRNNCell, or a `Bidirectional` of
            one (`recurrent_layers`).
        fishers: a list of `LocalFisher` configs (`get_config()` dicts), one per recurrent layer: one, or two
            for a `Bidirectional` layer (forward, backward). Defaults to `None`: LocalFishers with their
            default arguments, named after the layer.
        **kwargs: base layer keyword arguments (`name`, ...).
    """

    def __init__(self, layer, fishers=None, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            raise ValueError("`layer` must be an LSTM, GRU, SimpleRNN or RNN layer, or a Bidirectional of one. "
                             f"Received: layer={layer!r}")
        cells = _direction_cells(layer)
        reason = next((state_reason_unbuilt(cell) for cell in cells if state_reason_unbuilt(cell)), None)
        if reason is not None:
            raise ValueError(f"RecurrentWhitening cannot whiten the recurrent state of {type(layer).__name__} "
                             f"'{layer.name}': {reason}.")
        if fishers is None:
            labels = [""] if len(cells) == 1 else ["_forward", "_backward"]
            fishers = [{"name": f"{layer.name}{label}_state_local_fisher"} for label in labels]
        if not isinstance(fishers, (list, tuple)) or len(fishers) != len(cells) or not all(
                isinstance(config, dict) for config in fishers):
            raise ValueError(f"`fishers` must be a list of {len(cells)} LocalFisher config dicts, one per recurrent "
                             f"layer of {type(layer).__name__} '{layer.name}'. Received: fishers={fishers!r}")
        self.fishers = [LocalFisher.from_config(dict(config, center=False)) for config in fishers]
        self._bindings = None
        self.supports_masking = True

    # Building.

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        targets = recurrent_layers(self.layer)
        bindings = []
        for position, (target, fisher) in enumerate(zip(targets, self.fishers)):
            units = target.cell.recurrent_kernel.shape[0]
            if not fisher.built:
                fisher.build((None, None, units))
            label = STATE if len(targets) == 1 else ("forward_state", "backward_state")[position]
            binding = state_binding(target, label)
            object.__setattr__(fisher, "_inner_bindings", [binding])
            bindings.append(binding)
            self._route(target, position)
        self._bindings = bindings
        for fisher in self.fishers:
            fisher.prepare_handoff()
        self.built = True

    def _route(self, target, position):
        """Make `target`'s call (an RNN layer inside) compute with `U_h R'` and feed its LocalFisher."""
        original = type(target).call.__get__(target)
        wrapper = self

        def call(sequences, initial_state=None, mask=None, training=False):
            return wrapper._whitened_call(position, target, original, sequences, initial_state, mask, training)

        object.__setattr__(target, "call", call)

    # Calling.

    def call(self, sequences, initial_state=None, mask=None, training=None):
        kwargs = {"training": training}
        if initial_state is not None:
            kwargs["initial_state"] = initial_state
        if mask is not None:
            kwargs["mask"] = mask
        return self.layer(sequences, **kwargs)

    def _whitened_call(self, position, target, original, sequences, initial_state, mask, training):
        fisher, binding = self.fishers[position], self._bindings[position]
        cell = target.cell
        variable = cell.recurrent_kernel
        effective = ops.cast(_effective_kernel(fisher, binding, variable), cell.compute_dtype)
        observe = bool(training) and fisher.trainable
        # Before the call, which moves a stateful layer's kept state on.
        first = _initial_state(target, initial_state, sequences) if observe else None
        returns_sequences = target.return_sequences
        object.__setattr__(cell, "recurrent_kernel", effective)
        if observe:
            object.__setattr__(target, "return_sequences", True)
        try:
            result = original(sequences, initial_state=initial_state, mask=mask, training=training)
        finally:
            object.__setattr__(cell, "recurrent_kernel", variable)
            object.__setattr__(target, "return_sequences", returns_sequences)
        if not observe:
            return result
        outputs, states = (result[0], list(result[1:])) if target.return_state else (result, [])
        first = ops.cast(first, outputs.dtype)
        previous = ops.concatenate([ops.expand_dims(first, 1), outputs[:, :-1]], axis=1)
        whitened = fisher(ops.stop_gradient(previous), training=True, mask=mask)
        if not returns_sequences:
            outputs = outputs[:, -1]
        # The LocalFisher's output carries its hand-over to the optimizer (`keras_sngd.handoff`): a zero that
        # depends on it joins the layer's output, so that the backward pass reaches it. Never NaN.
        # A sequence-to-sequence encoder is read only through its states, so the zero joins them too: the
        # hand-over's custom gradient returns its values once, however many paths reach it.
        anchor = ops.sum(whitened) * 0.0
        anchor = ops.where(ops.isfinite(anchor), anchor, 0.0)
        outputs = outputs + ops.cast(anchor, outputs.dtype)
        states = [state + ops.cast(anchor, state.dtype) for state in states]
        return (outputs, *states) if target.return_state else outputs

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, *args, **kwargs):
        return self.layer.compute_mask(*args, **kwargs)

    # Folding, saving, reporting.

    def folded_layer(self):
        """A copy of the wrapped layer, without LocalFishers, whose recurrent kernels are `R = U_h R'`: what
        `keras_sngd.fold` puts in the wrapper's place (the input kernel keeps `W'`, for the LocalFisher
        before the wrapper to absorb)."""
        from keras_sngd.fold import _absorb  # fold imports this module
        from keras_sngd.graph import clone_layer
        from keras_sngd.graph import set_weights_from

        new = clone_layer(self.layer)
        new.build_from_config(self.layer.get_build_config())
        set_weights_from(self.layer, new)
        for fisher, binding, target in zip(self.fishers, self._bindings, recurrent_layers(new)):
            _absorb(fisher, binding, target, state_binding(target))
        return new

    def get_config(self):
        config = super().get_config()
        config["fishers"] = [fisher.get_config() for fisher in self.fishers]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)

    def _keras_sngd_consumer(self):
        """The RNN layer, whose input kernel reads this wrapper's input (`keras_sngd.binding.wrapped_consumer`)."""
        return self.layer

    def _keras_sngd_inner_fishers(self):
        """The LocalFishers inside (`keras_sngd.graph.walk_layers` yields them after the wrapper)."""
        return list(self.fishers)

    def describe(self):
        """One line per LocalFisher inside (`LocalFisher.describe`), with the recurrent kernel it whitens."""
        targets = recurrent_layers(self.layer)
        return "\n".join(f"{fisher.describe()} [the state h_(t-1) read by the recurrent kernel of '{target.name}']"
                         for fisher, target in zip(self.fishers, targets))


def _direction_cells(layer):
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def state_reason_unbuilt(layer):
    """`state_reason`, leaving out what needs the layer built (a wrapper is made before its layer is built)."""
    reason = state_reason(layer)
    return None if reason == "not built" or (reason is not None and not layer.built and reason.startswith("frozen")) else reason


def _effective_kernel(fisher, binding, variable):
    """`U_h R'` with the current `U_h` (no gradient into it) and the gradient flowing into `R'`.

    `U_h` is copied: the LocalFisher's call later in the same step may refresh it, and on PyTorch that is an
    in-place write to the storage this product's gradient reads."""
    kernel = ops.cast(ops.convert_to_tensor(variable), "float32")
    root = keras.tree.map_structure(lambda factor: ops.copy(ops.stop_gradient(factor)), fisher._current_root())
    if root:
        return binding.mix_with(lambda flat: root_times(root, flat), kernel)
    inverse_root = ops.copy(ops.stop_gradient(ops.convert_to_tensor(fisher.inverse_root)))
    return binding.mix(inverse_root, kernel)


def _initial_state(target, initial_state, sequences):
    """`h_0`, the state the first step's recurrent kernel reads: the given initial state's first tensor (an
    LSTM's `h`), a stateful layer's kept state, or zeros; `(batch, units)`."""
    if initial_state is not None:
        first = keras.tree.flatten(initial_state)[0]
    elif target.stateful and target.states is not None:
        first = keras.tree.flatten(target.states)[0]
    else:
        units = target.cell.recurrent_kernel.shape[0]
        return ops.zeros((ops.shape(sequences)[0], units), dtype=target.compute_dtype)
    return ops.stop_gradient(ops.convert_to_tensor(first))
