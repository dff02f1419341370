"""Which layers can absorb a mixing of their input features, and how.

A `LocalFisher` before a layer multiplies the layer's input features by `U`; the layer's kernel `K'` sees
`U x`. The effective kernel of the plain layer is `K = U K'` along the kernel's input-feature axis:

```
Dense                 K[i, o]            = sum_j U[i, j] K'[j, o]
Conv1D/2D/3D          K[..., i, o]       = sum_j U[i, j] K'[..., j, o]          (channel mixing)
Conv*Transpose        K[..., o, i]       = sum_j U[i, j] K'[..., o, j]
LSTM/GRU/SimpleRNN    cell.kernel[i, :]  = sum_j U[i, j] cell.kernel'[j, :]      (input kernel only)
RNN(cell)             the same, for an LSTMCell, GRUCell or SimpleRNNCell, or the first of stacked cells
ConvLSTM1D/2D/3D      cell.kernel[..., i, o] = sum_j U[i, j] cell.kernel'[..., j, o]  (input kernel only)
EinsumDense           the kernel axis of the one contracted input letter, the input's last
TimeDistributed(L)    L's kernel, as for L (the wrapper's input has one more axis, time, after the batch)
Bidirectional(R)      both directions' input kernels, each as for R (two bindings for one layer)
MultiHeadAttention    the query, key and value projections (EinsumDense, kernel axis 0), each on the call
  GroupQueryAttention   argument it reads: `query`, `key` (or `value` without one), `value`
```

With centering the input is `U (x - mu)`, and the bias absorbs the shift: `b = b' - contract(K, mu)`
over the input-feature and spatial axes. That is exact for Dense, RNN input kernels and `valid`
convolutions; with `same`/`causal` padding the zero-padded border positions see no shift, so it is exact
only in the interior (`Binding.exact_centering`). Depthwise, separable and grouped convolutions apply
separate filters per input channel: no kernel can absorb a mixing of channels, so they are not bindable.
Neither are raw operations (`x + y`) and composite layers (a KerasHub `TransformerEncoder`, a user's
block), whose inner Dense/EinsumDense layers are called inside their own `call` on tensors of their own
making. The two wrappers and the attention layers above are different: they call the inner layer on
their own input (each time step, each direction, or the query, key and value arguments as given), so a
mixing of that input is a mixing of the inner layer's input. An attention layer's output projection
reads the attention's result, made inside its call, and keeps its kernel.

Whether a layer that *could* absorb `U` actually does (it must be the one consumer call path of the
LocalFisher's output) is decided by `keras_sngd.consumers`.
"""

import keras
from keras import ops

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_RECURRENT = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)
_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)
_CONV_LSTM = (keras.layers.ConvLSTM1D, keras.layers.ConvLSTM2D, keras.layers.ConvLSTM3D)
_WRAPPERS = (keras.layers.TimeDistributed, keras.layers.Bidirectional)
ATTENTION_TYPES = (keras.layers.MultiHeadAttention,) + (
    (keras.layers.GroupQueryAttention,) if hasattr(keras.layers, "GroupQueryAttention") else ()
)
# (label, attribute, the call argument it reads as `(keyword, position)` pairs, the first present counting).
_ATTENTION_PROJECTIONS = (
    ("query", "_query_dense", (("query", 0),)),
    ("key", "_key_dense", (("key", 2), ("value", 1))),
    ("value", "_value_dense", (("value", 1),)),
)
_NOT_MIXABLE = (
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


class Binding:
    """How one layer's weights absorb `U` (and a shift `mu`) on its input features.

    Attributes:
        layer: the consumer layer.
        kernel: its kernel variable (for RNNs the cell's input kernel).
        input_axis: the kernel axis that indexes input features.
        feature_axis: the axis of the layer's *input* that holds the features (what `LocalFisher(axis=...)`
            must use before it).
        bias: the bias variable or None.
        bias_row: for GRU with `reset_after=True` the bias has shape `(2, 3 * units)`; row 0 is the input
            bias. None otherwise.
        centering: None if the bias can absorb a shift, else the reason it cannot.
        exact_centering: False where padding makes the absorbed shift inexact at the borders.
        part: which of the layer's bindings this is (`bindings_for`): 0, or 1 for the backward direction
            of a `Bidirectional` layer, or 0, 1, 2 for the query, key and value projections of an attention
            layer.
        label: None for a layer's only (or forward) kernel, else what `name` appends: `"backward"`,
            `"query"`, `"key"`, `"value"`.
        argument: None where the kernel mixes the call's first argument (every layer but attention), else
            the `(keyword, position)` pairs to look the argument up by, the first present one counting
            (`argument_tensor`): an attention layer's key projection reads `key`, or `value` without one.
    """

    def __init__(self, layer, kernel, input_axis, feature_axis, bias, bias_row=None, centering=None,
                 exact_centering=True, part=0, label=None, argument=None):
        self.layer = layer
        self.part = part
        self.label = label
        self.argument = argument
        self.kernel = kernel
        self.input_axis = input_axis
        self.feature_axis = feature_axis
        self.bias = bias
        self.bias_row = bias_row
        self.centering = centering
        self.exact_centering = exact_centering

    @property
    def exact_centering_refusal(self):
        """None where the bias absorbs a centering shift exactly at every output position, else why not:
        `centering`, or the border positions of a padded convolution (which a graph LocalFisher can still
        center, `fold` putting the shift before the layer; one inside a composite layer cannot)."""
        if self.centering:
            return self.centering
        return None if self.exact_centering else "a padded convolution's border positions do not see the shift"

    @property
    def name(self):
        """The consumer's name, with the binding's label (the backward direction of a `Bidirectional` layer,
        an attention layer's projection)."""
        return self.layer.name if self.label is None else f"{self.layer.name}_{self.label}"

    def wrapped(self, layer, time_axis=False, part=None):
        """This binding of a wrapped layer, as a binding of its wrapper `layer` (`TimeDistributed` with
        `time_axis`: the wrapper's input has a time axis after the batch, so a feature axis counted from
        the front moves by one). `part`: its index among the wrapper's bindings (default: this one's, so
        that a `TimeDistributed` `Bidirectional` layer keeps its two)."""
        feature_axis = self.feature_axis + 1 if time_axis and self.feature_axis >= 0 else self.feature_axis
        return Binding(layer, self.kernel, self.input_axis, feature_axis, self.bias, self.bias_row,
                       self.centering, self.exact_centering, self.part if part is None else part,
                       "backward" if part == 1 else self.label, self.argument)

    @property
    def input_axes(self):
        """The kernel axes that index input features, as a tuple: one, or for an EinsumDense that contracts
        the input's last few axes (an attention's output projection, `abcd,cde->abe`) those, in the input's
        order (`inner_binding`; the features are then the flattened axes)."""
        return tuple(self.input_axis) if isinstance(self.input_axis, (tuple, list)) else (self.input_axis,)

    @property
    def features(self):
        size = 1
        for axis in self.input_axes:
            size *= self.kernel.shape[axis]
        return size

    @property
    def contracted_axes(self):
        """How many trailing axes of the input the kernel contracts (1 but for `inner_binding`'s)."""
        return len(self.input_axes)

    @property
    def trainable(self):
        """Whether the consumer takes gradient steps on this kernel (it and its layer are not frozen)."""
        return self.layer.trainable and self.kernel.trainable

    def mix(self, matrix, kernel=None):
        """`kernel` (default: the current one) with `matrix` applied on the input axis: `K <- M K`."""
        return self.mix_with(lambda flat: ops.matmul(ops.cast(matrix, flat.dtype), flat), kernel)

    def mix_with(self, function, kernel=None):
        """`kernel` (default: the current one) with a linear map applied on the input axis: `K <- f(K)`,
        `function` taking and returning the kernel as a `(features, -1)` matrix (e.g. `M K` given in
        factored form, `keras_sngd.low_rank.low_rank_mixing`)."""
        kernel = ops.convert_to_tensor(self.kernel) if kernel is None else kernel
        axes = self.input_axes
        leading = tuple(range(len(axes)))
        moved = ops.moveaxis(kernel, axes, leading)
        sizes = tuple(moved.shape[:len(axes)])
        rest = tuple(moved.shape[len(axes):])
        mixed = function(ops.reshape(moved, (self.features, -1)))
        return ops.moveaxis(ops.reshape(mixed, sizes + rest), leading, axes)

    def shift_response(self, kernel, shift):
        """`contract(K, shift)` over the input-feature and spatial axes: what a constant input `shift` adds
        to every output, to be absorbed by the bias. Shape of the (input) bias."""
        moved = ops.moveaxis(kernel, self.input_axis, -1)
        response = ops.sum(ops.multiply(moved, ops.cast(shift, kernel.dtype)), axis=-1)
        # What remains: spatial axes (convolutions) then outputs. Sum the spatial ones.
        spatial = len(response.shape) - 1
        if spatial:
            response = ops.sum(response, axis=tuple(range(spatial)))
        return response

    def shifted_bias(self, bias, kernel, shift):
        """The full bias value that absorbs a constant `shift` of the input: `b - contract(kernel, shift)`
        on the input bias (`kernel` is the effective kernel that sees the shift). The one formula for both
        centering (`fold`: `b = b' - contract(U K', mu)`) and the refresh of a centered LocalFisher
        (`b'_new = b' + contract(U_old K', mu_new - mu_old)`, i.e. `shift = mu_old - mu_new`)."""
        response = ops.cast(self.shift_response(kernel, shift), bias.dtype)
        return self.with_bias(bias, self.input_bias(bias) - response)

    def input_bias(self, bias):
        """The part of the bias value `bias` that adds to the input kernel's outputs."""
        return bias if self.bias_row is None else bias[self.bias_row]

    def with_bias(self, bias_value, new_input_bias):
        """The full bias variable value with the input bias replaced."""
        if self.bias_row is None:
            return new_input_bias
        rows = [new_input_bias if row == self.bias_row else bias_value_row
                for row, bias_value_row in enumerate(ops.unstack(bias_value, axis=0))]
        return ops.stack(rows, axis=0)


def bindings_for(layer):
    """`(bindings, None)` if `layer`'s weights can absorb an input mixing, else `([], reason)`: one
    `Binding` per kernel that reads the input (two for a `Bidirectional` layer, one otherwise).

    The layer must be built.
    """
    inner_layer = wrapped_consumer(layer)
    if inner_layer is not None:
        inner, reason = bindings_for(inner_layer)
        return [binding.wrapped(layer) for binding in inner], reason
    if isinstance(layer, keras.layers.Bidirectional):
        bindings = []
        for part, direction in enumerate((layer.forward_layer, layer.backward_layer)):
            inner, reason = bindings_for(direction)
            if not inner:
                return [], f"its {'forward' if part == 0 else 'backward'} layer: {reason}"
            bindings.extend(binding.wrapped(layer, part=part) for binding in inner)
        return bindings, None
    if isinstance(layer, ATTENTION_TYPES):
        return _attention_bindings(layer)
    if isinstance(layer, keras.layers.TimeDistributed):
        inner, reason = bindings_for(layer.layer)
        if not inner:
            return [], f"its wrapped {type(layer.layer).__name__}: {reason}"
        return [binding.wrapped(layer, time_axis=True) for binding in inner], None
    binding, reason = binding_for(layer)
    return ([binding], None) if binding is not None else ([], reason)


def binding_for(layer):
    """`(Binding, None)` if `layer`'s weights can absorb an input mixing through one kernel, else
    `(None, reason)` (wrappers, which may have two, go through `bindings_for`).

    The layer must be built.
    """
    if not isinstance(layer, keras.layers.Layer):
        return None, f"{type(layer).__name__} is an operation on tensors, not a layer with a kernel"
    if wrapped_consumer(layer) is not None:
        bindings, reason = bindings_for(layer)
        if len(bindings) == 1:
            return bindings[0], None
        return None, reason or f"a {type(layer).__name__} layer has several kernels on its inputs (use bindings_for)"
    if isinstance(layer, _NOT_MIXABLE):
        return None, f"{type(layer).__name__} filters each input channel separately: it cannot absorb a mixing of channels"
    if getattr(layer, "lora_enabled", False):
        return None, "LoRA is enabled: its low-rank kernel update is not re-expressed"
    policy = getattr(layer, "dtype_policy", None)
    if policy is not None and getattr(policy, "quantization_mode", None):
        return None, f"quantized ({policy.quantization_mode}) kernels cannot be re-expressed"
    if not layer.built:
        return None, "not built"
    if isinstance(layer, keras.layers.Dense):
        centering = None if layer.bias is not None else "no bias to absorb the shift"
        return Binding(layer, layer.kernel, 0, -1, layer.bias, centering=centering), None
    if isinstance(layer, _CONVOLUTIONS + _TRANSPOSED):
        if getattr(layer, "groups", 1) != 1:
            return None, f"grouped convolution (groups={layer.groups}) cannot absorb a mixing across groups"
        transposed = isinstance(layer, _TRANSPOSED)
        feature_axis = -1 if layer.data_format == "channels_last" else 1
        input_axis = -1 if transposed else -2
        if transposed:
            centering = "a transposed convolution adds a varying number of shifted inputs to each output"
        else:
            centering = None if layer.bias is not None else "no bias to absorb the shift"
        return Binding(
            layer, layer.kernel, input_axis, feature_axis, layer.bias, centering=centering,
            exact_centering=layer.padding == "valid",
        ), None
    if isinstance(layer, _CONV_LSTM):
        cell = layer.cell
        feature_axis = -1 if cell.data_format == "channels_last" else 2  # (batch, time, channels, ...)
        centering = None if cell.bias is not None else "no bias to absorb the shift"
        return Binding(layer, cell.kernel, -2, feature_axis, cell.bias, centering=centering,
                       exact_centering=cell.padding == "valid"), None
    if isinstance(layer, keras.layers.RNN):
        cell = input_cell(layer)
        if cell is None:
            return None, (f"{type(layer).__name__} with a {type(layer.cell).__name__}: only LSTMCell, GRUCell "
                          "and SimpleRNNCell (alone or first of stacked cells) have a known input kernel")
        bias_row = None
        if cell.bias is not None and len(cell.bias.shape) == 2:
            bias_row = 0  # GRU(reset_after=True): row 0 is the input bias
        centering = None if cell.bias is not None else "no bias to absorb the shift"
        return Binding(layer, cell.kernel, 0, -1, cell.bias, bias_row=bias_row, centering=centering), None
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_binding(layer)
    if isinstance(layer, _WRAPPERS + ATTENTION_TYPES):
        bindings, reason = bindings_for(layer)
        if len(bindings) == 1:
            return bindings[0], None
        return None, reason or f"a {type(layer).__name__} layer has several kernels on its inputs (use bindings_for)"
    if isinstance(layer, keras.layers.SpectralNormalization):
        # Its call divides the wrapped layer's kernel by that kernel's largest singular value (a power
        # iteration in training). With W = U W' it would divide W' by sigma(W'), not W by sigma(W): another
        # function, which every refresh would change again.
        return None, (
            f"SpectralNormalization divides its {type(layer.layer).__name__}'s kernel by the kernel's largest "
            "singular value; with a LocalFisher it would normalize the whitened kernel W' (W = U W') instead, "
            "another function that every refresh would change"
        )
    inner = [sublayer for sublayer in layer._flatten_layers(include_self=False) if is_supported_type(sublayer)]
    if inner:
        kinds = sorted({type(sublayer).__name__ for sublayer in inner})
        return None, (
            f"composite layer with {len(inner)} {'/'.join(kinds)} layers inside: its inner layers are not "
            "rewritten (reconstruct rewrites the model graph, not a layer's own call)"
        )
    return None, f"{type(layer).__name__} has no kernel over its input features that SNGD knows how to re-express"


def _attention_bindings(layer):
    """The query, key and value projections of a `MultiHeadAttention` (or `GroupQueryAttention`) layer:
    `EinsumDense` layers inside its call, each reading one of the call's arguments as it is, so a mixing of
    that argument's features is a mixing of the projection's input. The output projection reads the
    attention's result, made inside the call: it is not bound."""
    if not layer.built:
        return [], "not built"
    if not any(type(layer).call is base.call for base in ATTENTION_TYPES):
        # A subclass may transform an argument before projecting it; only Keras's own call is known not to.
        return [], (f"{type(layer).__name__} overrides the call of {type(layer).__mro__[1].__name__}: whether its "
                    "projections read the query, key and value as given is not known")
    bindings = []
    for part, (label, projection, argument) in enumerate(_ATTENTION_PROJECTIONS):
        dense = getattr(layer, projection, None)
        if not isinstance(dense, keras.layers.EinsumDense) or not dense.built:
            return [], f"{type(layer).__name__} without a built {label} projection ({projection})"
        if getattr(dense, "lora_enabled", False):
            return [], f"its {label} projection has LoRA enabled: its low-rank kernel update is not re-expressed"
        inner, reason = _einsum_binding(dense)
        if inner is None:
            return [], f"its {label} projection: {reason}"
        bindings.append(Binding(layer, inner.kernel, inner.input_axis, -1, inner.bias, centering=inner.centering,
                                part=part, label=label, argument=argument))
    return bindings, None


def argument_place(binding, args, kwargs):
    """`(place, value)` of the argument of a call `layer(*args, **kwargs)` whose features `binding`'s kernel
    mixes, `place` being its `(keyword, position)`: the first positional argument (or, without one, the
    first keyword argument), or for an attention layer's projection the first present of the arguments
    named by `binding.argument`. `value` is None where there is none."""
    if binding.argument is None:
        if args:
            return (None, 0), args[0]
        keyword = next(iter(kwargs), None)
        return (keyword, 0), kwargs.get(keyword)
    for keyword, position in binding.argument:
        found = args[position] if len(args) > position else kwargs.get(keyword)
        if found is not None:
            return (keyword, position), found
    return binding.argument[-1], None


def argument_tensor(binding, args, kwargs):
    """The argument of a call whose features `binding`'s kernel mixes (`argument_place`), or None if that is
    not one tensor."""
    found = argument_place(binding, args, kwargs)[1]
    return found if isinstance(found, keras.KerasTensor) else None


def _einsum_binding(layer, trailing=False):
    inputs, rest = layer.equation.split(",")
    kernel_letters, outputs = rest.split("->")
    contracted = [letter for letter in inputs if letter in kernel_letters and letter not in outputs]
    several = (trailing and len(contracted) > 1 and inputs.endswith("".join(contracted))
               and all(letter not in outputs for letter in contracted))
    if "." in layer.equation or not (len(contracted) == 1 and inputs[-1] == contracted[0] or several):
        return None, (f"EinsumDense equation {layer.equation!r}: only one contracted input axis, the last, "
                      "has a clear kernel input axis")
    axes = tuple(kernel_letters.index(letter) for letter in contracted)
    return Binding(
        layer, layer.kernel, axes[0] if len(axes) == 1 else axes, -1, getattr(layer, "bias", None),
        centering=_einsum_centering(layer, kernel_letters, contracted),
    ), None


def _einsum_centering(layer, kernel_letters, contracted):
    """None where the EinsumDense's bias absorbs a constant shift of its input exactly, else why not.

    A shift `mu` of the contracted axis adds `contract(K, mu)` to every output: a vector over the kernel's
    one other axis when the kernel is `(features, units)`, which a bias on exactly that axis absorbs (as for
    `Dense` on inputs of any rank, `"abc,cd->abd"` with `bias_axes="d"`). A kernel with more output axes, or
    a bias on other axes, could not hold it."""
    if getattr(layer, "bias", None) is None:
        return "no bias to absorb the shift"
    others = [letter for letter in kernel_letters if letter not in contracted]
    if len(contracted) != 1 or len(others) != 1 or (layer.bias_axes or "") != others[0]:
        return ("EinsumDense bias axes cover its kernel's output axis only for a (features, units) kernel with "
                "a bias on its units")
    return None


def inner_binding(layer):
    """`binding_for(layer)`, and for an EinsumDense that contracts its input's last few axes together
    (`abcd,cde->abe`: an attention's output projection, over heads and their size) a binding on those
    axes flattened: a LocalFisher before it whitens the input reshaped to `(..., c * d)`. Only a LocalFisher
    inside a composite layer (`keras_sngd.inner_whitening`) reshapes its input so; in the model graph such
    a layer keeps its kernel."""
    binding, reason = binding_for(layer)
    if binding is None and isinstance(layer, keras.layers.EinsumDense) and reason.startswith("EinsumDense equation"):
        return _einsum_binding(layer, trailing=True)
    return binding, reason


def cannot_absorb_mixing(layer):
    """Whether `layer` is a convolution whose kernels cannot absorb a mixing of all its input channels:
    depthwise and separable convolutions (one filter per channel) and grouped convolutions (mixing within
    a group). `reconstruct` bounds their steps with a `keras_sngd.step_bound.StepBound` instead."""
    if isinstance(layer, _NOT_MIXABLE):
        return True
    return isinstance(layer, _CONVOLUTIONS + _TRANSPOSED) and getattr(layer, "groups", 1) != 1


def input_cell(layer):
    """The cell of the `keras.layers.RNN` `layer` (LSTM, GRU and SimpleRNN are ones) whose kernel reads the
    layer's input: its LSTMCell, GRUCell or SimpleRNNCell, or the first of its stacked cells; None for
    another cell."""
    cell = layer.cell
    if isinstance(cell, keras.layers.StackedRNNCells):
        cell = cell.cells[0]
    return cell if isinstance(cell, _CELLS) else None


SUPPORTED_TYPES = ((keras.layers.Dense, keras.layers.EinsumDense) + ATTENTION_TYPES + _CONVOLUTIONS + _TRANSPOSED
                   + _RECURRENT + (keras.layers.RNN,) + _CONV_LSTM + _WRAPPERS)


def is_supported_type(layer):
    """Whether `reconstruct` treats this layer as a parameterized consumer: a supported type, an RNN with
    a known input cell, or a wrapper (`TimeDistributed`, `Bidirectional`) of one."""
    return layer_family(layer) is not None


def layer_family(layer):
    """`"dense"` (Dense, EinsumDense), `"convolution"` (convolutions, transposed ones, ConvLSTM),
    `"recurrent"` (RNNs with a known input cell) or None, looking through `TimeDistributed` and
    `Bidirectional`."""
    inner_layer = wrapped_consumer(layer)
    if inner_layer is not None:
        return layer_family(inner_layer)
    if isinstance(layer, keras.layers.TimeDistributed):
        return layer_family(layer.layer)
    if isinstance(layer, keras.layers.Bidirectional):
        return layer_family(layer.forward_layer)
    if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense) + ATTENTION_TYPES):
        return "dense"
    if isinstance(layer, _CONVOLUTIONS + _TRANSPOSED + _CONV_LSTM):
        return "convolution"
    if isinstance(layer, keras.layers.RNN) and input_cell(layer) is not None:
        return "recurrent"
    return None


def wrapped_consumer(layer):
    """The layer a keras-sngd wrapper stands for as a consumer of the LocalFisher before it (the RNN inside a
    `keras_sngd.RecurrentWhitening`, whose input kernel reads the wrapper's input as it is), or None."""
    get = getattr(type(layer), "_keras_sngd_consumer", None)
    return None if get is None else get(layer)
