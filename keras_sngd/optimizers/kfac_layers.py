"""K-FAC layers: Dense and Conv layers that keep the Kronecker factors `A` and `S` of their Fisher block.

`prepare(model)` swaps every plain `Dense`, `Conv1D`, `Conv2D` and `Conv3D` of a model for the K-FAC
version here (same configuration, same weights, same outputs). During training each of them keeps two
running averages that `keras_sngd.optimizers.KFAC` reads:

```
A = E[a a^T]      a = [input patch, 1]: the layer input (Dense) or one receptive field (Conv), with a 1
                  appended for the bias (homogeneous coordinates, Martens & Grosse 2015, Sec. 3)
S = E_i[sum_t g_it g_it^T]    g_it = dl_i/dz_it, the per-example gradient of the loss with respect to the
                  pre-activation z at position t (one position for Dense)
```

so that the layer's Fisher block is approximated by `F ~ A (x) S` (Kronecker product). For a convolution
this is KFC (Grosse & Martens 2016) under its spatial homogeneity and spatially uncorrelated derivatives
assumptions: with T output positions, `A` averages `a a^T` over examples *and* positions and `S` sums
`g g^T` over positions and averages over examples, so `A (x) S = T * E_t[a a^T] (x) E_t[g g^T]`, KFC's
`Omega (x) Gamma` up to where the factor T sits. A Dense layer on inputs of rank > 2 (e.g. `(batch, time,
features)`) is treated the same way, with the middle axes as positions.

How `S` is reached inside a compiled `model.fit` step: the pre-activations pass through an identity with a
custom gradient. Its backward pass sees `dL/dz` (for a loss averaged over the batch,
`dL/dz_it = g_it / n`), computes `S_batch = n * sum_it (dL/dz_it)(dL/dz_it)^T`, and returns the new
running averages as the "gradients" of the factor variables, which are created with
`overwrite_with_gradient=True` (Keras's mechanism for float8 scales): every Keras optimizer overwrites such
a variable with its gradient and leaves it out of momentum, clipping and weight decay. This works the same
on TensorFlow and JAX, with and without jit, because no variable is assigned inside the backward pass.

The running averages, updated once per training step:

```
A_var <- decay * A_var + (1 - decay) * A_batch
S_var <- decay * S_var + (1 - decay) * S_batch
c     <- decay * c + (1 - decay)              # bias correction: A = A_var / c, S = S_var / c
```

A batch with a NaN or Inf in either factor leaves all three unchanged. During inference nothing is
updated and the layer computes exactly what the plain layer computes.

`g` above is the empirical Fisher's (the training labels). `prepare(model, fisher="true")` gives the true
Fisher's `S` instead, from copies of a few examples that carry gradients for labels sampled from the model
(`SampledFisherRows`, `SampledLabels`).
"""

import math

import keras
from keras import ops

from keras_sngd.validation import check_choice
from keras_sngd.validation import check_float
from keras_sngd.validation import check_int
from keras_sngd.width import MAX_FEATURES
from keras_sngd.width import check_max_features

KFAC_DEFAULT_FACTOR_DECAY = 0.95

def input_factor_batch(patches):
    """`A_batch = [a, 1]^T [a, 1] / rows`: the second moment of the homogeneous input rows.

    Args:
        patches: tensor `(..., d)`; every leading position is one row (an example, or an example's
            receptive field for a convolution).

    Returns:
        float32 `(d + 1, d + 1)`, gradients stopped.
    """
    rows = ops.cast(ops.stop_gradient(patches), "float32")
    rows = ops.reshape(rows, (-1, rows.shape[-1]))
    rows = ops.concatenate([rows, ops.ones_like(rows[:, :1])], axis=1)
    count = ops.cast(ops.shape(rows)[0], "float32")
    return ops.matmul(ops.transpose(rows), rows) / count


def output_factor_batch(output_gradient):
    """`S_batch = n * sum_rows (dL/dz)(dL/dz)^T` for the gradient of a batch-mean loss.

    With `dL/dz_it = g_it / n` (loss averaged over the `n` examples), this is
    `(1/n) sum_i sum_t g_it g_it^T`: the per-example second moment, summed over positions.

    Args:
        output_gradient: tensor `(n, ..., units)`, the gradient of the loss with respect to the
            pre-activations.

    Returns:
        float32 `(units, units)`.
    """
    gradient = ops.cast(output_gradient, "float32")
    examples = ops.cast(ops.shape(gradient)[0], "float32")
    rows = ops.reshape(gradient, (-1, gradient.shape[-1]))
    return examples * ops.matmul(ops.transpose(rows), rows)


def sampled_output_factor_batch(sampled_gradient):
    """`S_batch = (1/k) sum_rows g g^T` for per-example gradients `g` of `k` examples (the true Fisher's rows).

    Args:
        sampled_gradient: tensor `(k, ..., units)`, gradients of `-log p(y_sampled | x)` with respect to the
            pre-activations, one example per leading index.

    Returns:
        float32 `(units, units)`.
    """
    gradient = ops.cast(sampled_gradient, "float32")
    examples = ops.cast(ops.shape(gradient)[0], "float32")
    rows = ops.reshape(gradient, (-1, gradient.shape[-1]))
    return ops.matmul(ops.transpose(rows), rows) / examples


def conv_patches(inputs, kernel_size, strides, padding, dilation_rate):
    """Every receptive field of a channels-last convolution, flattened like `kernel.reshape(-1, filters)`.

    A convolution with a one-hot kernel: output channel `j` copies the input value at the kernel offset
    and input channel whose row-major flat index is `j`, so `patches @ kernel.reshape(-1, filters)` is the
    convolution itself.

    Returns:
        tensor `(batch, *output_positions, prod(kernel_size) * channels)`.
    """
    channels = inputs.shape[-1]
    width = math.prod(kernel_size) * channels
    selector = ops.reshape(ops.eye(width, dtype=inputs.dtype), tuple(kernel_size) + (channels, width))
    return ops.conv(inputs, selector, strides=strides, padding=padding, dilation_rate=dilation_rate)


def _update_factor(old, batch, decay):
    return decay * old + (1.0 - decay) * batch


class KFACLayerMixin:
    """What a K-FAC layer adds to its plain Keras layer: the factor variables and the gradient probe."""

    def _init_kfac(self, factor_decay, sampled_rows):
        self.factor_decay = check_float("factor_decay", factor_decay, 0.0, 1.0, exclusive_maximum=True)
        self.sampled_rows = check_int("sampled_rows", sampled_rows, 0)

    def call(self, inputs, training=None):
        self._check_call()
        inputs, padding = self._padded(inputs)
        kernel, bias = self._kernel, self.bias
        rows = self.sampled_rows
        if training and rows:
            # The last `rows` examples are the true-Fisher copies (see `prepare(fisher="true")`): they see
            # the weights through stop_gradient, so that only their cotangents (for sampled labels) reach S.
            real, copies = inputs[:-rows], inputs[-rows:]
            frozen_bias = None if bias is None else ops.stop_gradient(bias)
            outputs = ops.concatenate(
                [self._linear(real, kernel, bias, padding), self._linear(copies, ops.stop_gradient(kernel), frozen_bias, padding)],
                axis=0,
            )
            outputs = self._probe(outputs, input_factor_batch(self._patches(real, padding)))
        else:
            outputs = self._linear(inputs, kernel, bias, padding)
            if training:
                outputs = self._probe(outputs, input_factor_batch(self._patches(inputs, padding)))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _padded(self, inputs):
        return inputs, None

    def _build_factors(self):
        if self.dtype_policy.compute_dtype == "float16":
            raise ValueError(
                f"{type(self).__name__} '{self.name}': K-FAC does not handle float16 mixed precision, whose loss "
                "scaling would scale S by the loss scale squared. Use float32 or 'mixed_bfloat16'."
            )
        kernel = self._kernel
        inputs = math.prod(kernel.shape[:-1]) + 1
        units = kernel.shape[-1]

        def factor(name, shape):
            return self.add_weight(
                name=name, shape=shape, initializer="zeros", dtype="float32", trainable=True, autocast=False,
                overwrite_with_gradient=True,
            )

        self.input_factor = factor("input_factor", (inputs, inputs))
        self.output_factor = factor("output_factor", (units, units))
        self.factor_weight = factor("factor_weight", ())
        # The optimizer finds the layer from the kernel it receives (also after loading a saved model).
        kernel._kfac_layer = self

    @property
    def kfac_bias(self):
        """The bias variable or None (the last row of `A`'s homogeneous coordinate)."""
        return self.bias

    def factors(self):
        """Bias-corrected `(A, S)`, float32; zero matrices before the first training step."""
        weight = ops.maximum(ops.convert_to_tensor(self.factor_weight), 1e-30)
        return (
            ops.convert_to_tensor(self.input_factor) / weight,
            ops.convert_to_tensor(self.output_factor) / weight,
        )

    def _probe(self, outputs, input_factor):
        decay, rows = self.factor_decay, self.sampled_rows

        @ops.custom_gradient
        def probe(outputs, input_factor, old_input, old_output, old_weight):
            def grad(*args, upstream=None, variables=None):
                if upstream is None:
                    (upstream,) = args
                if rows:
                    output_factor = sampled_output_factor_batch(upstream[-rows:])
                else:
                    output_factor = output_factor_batch(upstream)
                accepted = ops.all(ops.isfinite(input_factor)) & ops.all(ops.isfinite(output_factor))
                new_input = ops.where(accepted, _update_factor(old_input, input_factor, decay), old_input)
                new_output = ops.where(accepted, _update_factor(old_output, output_factor, decay), old_output)
                new_weight = ops.where(accepted, _update_factor(old_weight, 1.0, decay), old_weight)
                return upstream, ops.zeros_like(input_factor), new_input, new_output, new_weight

            return outputs, grad

        return probe(
            outputs,
            input_factor,
            ops.convert_to_tensor(self.input_factor),
            ops.convert_to_tensor(self.output_factor),
            ops.convert_to_tensor(self.factor_weight),
        )

    # Dense and Conv save only kernel and bias (their quantization-aware formats); the factors are state to
    # keep, so every variable is saved in order, as a plain `Layer` does (LoRA and quantization are refused).
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def _kfac_config(self, config):
        config["factor_decay"] = self.factor_decay
        config["sampled_rows"] = self.sampled_rows
        return config


@keras.saving.register_keras_serializable(package="keras_sngd")
class KFACDense(KFACLayerMixin, keras.layers.Dense):
    """`keras.layers.Dense` that keeps its K-FAC factors `A` and `S` (see the module docstring).

    Training: `z = x W + b`, the factors are updated from `x` and `dL/dz`, then `activation(z)`.
    Inference: exactly `keras.layers.Dense`. LoRA and quantized modes are not supported.

    Args:
        factor_decay: float in [0, 1), the running averages' decay. Defaults to `0.95`.
        sampled_rows: int >= 0; in training, the last `sampled_rows` examples are true-Fisher copies
            (`prepare(fisher="true")`): they see the weights through stop_gradient and alone give `S`,
            while `A` comes from the other examples. Defaults to `0` (empirical Fisher).
        *args, **kwargs: as for `keras.layers.Dense`.
    """

    def __init__(self, *args, factor_decay=KFAC_DEFAULT_FACTOR_DECAY, sampled_rows=0, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_kfac(factor_decay, sampled_rows)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_factors()

    def _check_call(self):
        if self.lora_enabled or self.quantization_mode is not None:
            raise ValueError(f"KFACDense '{self.name}' does not support LoRA or quantization.")

    def _linear(self, inputs, kernel, bias, padding):
        outputs = ops.matmul(inputs, kernel)
        return outputs if bias is None else ops.add(outputs, bias)

    def _patches(self, inputs, padding):
        return inputs

    def get_config(self):
        return self._kfac_config(super().get_config())


class _KFACConv(KFACLayerMixin):
    """The convolution part shared by `KFACConv1D/2D/3D` (channels-last, one group)."""

    def _check_conv(self):
        if self.data_format != "channels_last":
            raise ValueError(
                f"{type(self).__name__} '{self.name}' supports data_format='channels_last' only. "
                f"Received: data_format={self.data_format!r}"
            )
        if self.groups != 1:
            raise ValueError(f"{type(self).__name__} '{self.name}' supports groups=1 only. Received: groups={self.groups}")

    def build(self, input_shape):
        self._check_conv()
        super().build(input_shape)
        self._build_factors()

    def _check_call(self):
        if self.lora_enabled:
            raise ValueError(f"{type(self).__name__} '{self.name}' does not support LoRA.")

    def _padded(self, inputs):
        if self.padding == "causal":
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            return ops.pad(inputs, [[0, 0], [left, 0], [0, 0]]), "valid"
        return inputs, self.padding

    def _linear(self, inputs, kernel, bias, padding):
        outputs = ops.conv(inputs, kernel, strides=list(self.strides), padding=padding, dilation_rate=self.dilation_rate)
        if bias is None:
            return outputs
        return ops.add(outputs, ops.reshape(bias, (1,) * (self.rank + 1) + (self.filters,)))

    def _patches(self, inputs, padding):
        return conv_patches(inputs, self.kernel_size, list(self.strides), padding, self.dilation_rate)

    def get_config(self):
        return self._kfac_config(super().get_config())


def _conv_class(base):
    def __init__(self, *args, factor_decay=KFAC_DEFAULT_FACTOR_DECAY, sampled_rows=0, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._init_kfac(factor_decay, sampled_rows)

    name = "KFAC" + base.__name__
    cls = type(
        name,
        (_KFACConv, base),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__doc__": (
                f"`keras.layers.{base.__name__}` that keeps its K-FAC factors `A` (over receptive fields) and `S`.\n\n"
                "    Training: the factors are updated from the input patches and `dL/dz` (KFC, see the module\n"
                "    docstring). Inference: exactly the plain layer. channels_last and groups=1 only.\n\n"
                "    Args:\n"
                "        factor_decay: float in [0, 1), the running averages' decay. Defaults to `0.95`.\n"
                "        sampled_rows: int >= 0, true-Fisher copies at the end of the batch (as for `KFACDense`).\n"
                "            Defaults to `0`.\n"
                f"        *args, **kwargs: as for `keras.layers.{base.__name__}`.\n"
            ),
        },
    )
    return keras.saving.register_keras_serializable(package="keras_sngd")(cls)


KFACConv1D = _conv_class(keras.layers.Conv1D)
KFACConv2D = _conv_class(keras.layers.Conv2D)
KFACConv3D = _conv_class(keras.layers.Conv3D)

_REPLACEMENTS = {
    keras.layers.Dense: KFACDense,
    keras.layers.Conv1D: KFACConv1D,
    keras.layers.Conv2D: KFACConv2D,
    keras.layers.Conv3D: KFACConv3D,
}


@keras.saving.register_keras_serializable(package="keras_sngd")
class SampledFisherRows(keras.layers.Layer):
    """Appends `rows` copies of the first examples to the batch in training (true-Fisher K-FAC, input side).

    Training: `[x; stop_gradient(x[j mod n] for j < rows)]`, `n + rows` examples. Inference: `x`.
    Inserted by `prepare(model, fisher="true")`; the K-FAC layers and `SampledLabels` treat the last
    `rows` examples as the copies.

    Args:
        rows: int >= 1, the number of copies. Defaults to `8`.
        **kwargs: base layer keyword arguments.
    """

    def __init__(self, rows=8, **kwargs):
        super().__init__(**kwargs)
        self.rows = check_int("rows", rows, 1)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        picks = ops.arange(self.rows) % ops.shape(inputs)[0]
        return ops.concatenate([inputs, ops.stop_gradient(ops.take(inputs, picks, axis=0))], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rows": self.rows}


@keras.saving.register_keras_serializable(package="keras_sngd")
class SampledLabels(keras.layers.Layer):
    """Drops the true-Fisher copies from the logits and gives them sampled-label gradients (output side).

    Training, with logits `l` of `n + rows` examples: the output is `l[:n]` (what the loss sees, so the
    training gradient is unchanged), labels `y_j ~ softmax(l_j)` are sampled for the copies, and the
    backward pass gives each copy the cotangent `softmax(l_j) - onehot(y_j)`, the gradient of
    `-log p(y_j | x_j)`. Through the K-FAC layers this makes `S` the true Fisher's factor (Monte Carlo,
    one sample per copy) instead of the empirical Fisher's. Inference: the logits unchanged.

    Args:
        rows: int >= 1, the number of copies at the end of the batch. Defaults to `8`.
        seed: int or None, the sampling seed. Defaults to `None`.
        **kwargs: base layer keyword arguments.
    """

    def __init__(self, rows=8, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rows = check_int("rows", rows, 1)
        self.seed = check_int("seed", seed, allow_none=True)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, logits, training=None):
        if not training:
            return logits
        rows = self.rows
        copies = ops.stop_gradient(ops.cast(logits[-rows:], "float32"))
        labels = keras.random.categorical(copies, 1, seed=self.seed_generator)[:, 0]
        onehot = ops.one_hot(labels, logits.shape[-1], dtype="float32")

        @ops.custom_gradient
        def drop_copies(logits, onehot):
            def grad(*args, upstream=None, variables=None):
                if upstream is None:
                    (upstream,) = args
                sampled = ops.softmax(ops.cast(logits[-rows:], "float32"), axis=-1) - onehot
                return ops.concatenate([upstream, ops.cast(sampled, upstream.dtype)], axis=0), ops.zeros_like(onehot)

            return logits[:-rows], grad

        return drop_copies(logits, onehot)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "seed": self.seed}


def prepare(model, factor_decay=KFAC_DEFAULT_FACTOR_DECAY, fisher="empirical", sampled_rows=8, seed=None,
            max_features=MAX_FEATURES):
    """A copy of `model` whose Dense/Conv1D/2D/3D layers keep K-FAC factors, for `keras_sngd.optimizers.KFAC`.

    Every layer whose class is exactly `keras.layers.Dense`, `Conv1D`, `Conv2D` or `Conv3D` becomes its
    K-FAC version (`KFACDense`, `KFACConv2D`, ...) with the same configuration and weights; every other
    layer is cloned unchanged (also inside nested models) and takes the plain SGD step in `KFAC`. The copy
    computes the same outputs as `model`.

    **Empirical Fisher** (`fisher="empirical"`): `S` comes from the gradients of the training loss at the
    true labels.

    **True Fisher** (`fisher="true"`): the prepared model is wrapped as
    `SampledFisherRows -> model -> SampledLabels`. In training, `sampled_rows` copies of the first
    examples ride along at the end of the batch; they see every K-FAC layer's weights through
    `stop_gradient`, their logits are removed before the loss, and their backward pass carries the
    gradient of `-log p(y | x)` for labels `y` sampled from the model's softmax. The K-FAC layers then
    take `S` from the copies only (`S = (1/k) sum g g^T`), and the training gradient, so the trajectory
    under any other optimizer, is unchanged. It needs one model output of logits `(batch, classes)` for a
    softmax cross-entropy loss, and no weights outside the replaced layers (a normalization layer would
    mix the copies into its batch statistics and its weights' gradients): a `ValueError` says otherwise.

    Args:
        model: a built Sequential or Functional model.
        factor_decay: float in [0, 1), decay of the factors' running averages. Defaults to `0.95`.
        fisher: `"empirical"` or `"true"`. Defaults to `"empirical"`.
        sampled_rows: int >= 1, the copies per batch for `fisher="true"`. Defaults to `8`.
        seed: int or None, the label-sampling seed for `fisher="true"`. Defaults to `None`.
        max_features: None or an int >= 1; a layer whose input factor `A` (its kernel's input size, plus 1
            for the bias) or output factor `S` (its units or filters) is larger than this stays plain and
            takes the plain SGD step: K-FAC keeps each factor and its inverse as dense square matrices,
            `keras_sngd.width` (VGG16's `fc1` at 224x224: 25,089 inputs, 5 GB). None replaces every width.
            Defaults to `8192`, as `reconstruct`.

    Returns:
        The prepared model (not compiled).

    Example:

    ```python
    kfac_model = keras_sngd.optimizers.prepare_kfac(model)
    kfac_model.compile(keras_sngd.optimizers.KFAC(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    factor_decay = check_float("factor_decay", factor_decay, 0.0, 1.0, exclusive_maximum=True)
    fisher = check_choice("fisher", fisher, ("empirical", "true"))
    sampled_rows = check_int("sampled_rows", sampled_rows, 1)
    seed = check_int("seed", seed, allow_none=True)
    max_features = check_max_features(max_features)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built keras.Model. Received: model={model!r}")
    if fisher == "true":
        _check_true_fisher_model(model)
    rows = sampled_rows if fisher == "true" else 0
    replaced = []

    def clone(layer):
        replacement = _REPLACEMENTS.get(type(layer))
        if replacement is None or (max_features is not None and max(_factor_sizes(layer)) > max_features):
            return layer.__class__.from_config(layer.get_config())
        replaced.append(layer.name)
        return replacement.from_config({**layer.get_config(), "factor_decay": factor_decay, "sampled_rows": rows})

    prepared = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if not replaced:
        raise ValueError(f"Model {model.name!r} has no Dense or Conv1D/2D/3D layer for K-FAC (with factors of at "
                         f"most max_features={max_features}).")
    for layer in _all_layers(prepared):
        if isinstance(layer, KFACLayerMixin) and len(layer._inbound_nodes) > 1:
            # The factor "gradients" of several calls would add up instead of averaging.
            raise ValueError(
                f"Layer {layer.name!r} is called {len(layer._inbound_nodes)} times in the model; K-FAC needs one "
                "call per Dense/Conv layer (no shared layers)."
            )
    originals = {layer.name: layer for layer in _all_layers(model)}
    for layer in _all_layers(prepared):
        original = originals.get(layer.name)
        if original is None or not original.weights:
            continue
        if isinstance(layer, KFACLayerMixin):
            # Through numpy: a copy, so that JAX's buffer donation in one model cannot delete the other's.
            layer._kernel.assign(ops.convert_to_numpy(original._kernel))
            if layer.bias is not None:
                layer.bias.assign(ops.convert_to_numpy(original.bias))
        elif not isinstance(layer, keras.Model):
            layer.set_weights(original.get_weights())
    if fisher == "empirical":
        return prepared
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    outputs = SampledLabels(sampled_rows, seed=seed)(prepared(SampledFisherRows(sampled_rows)(inputs)))
    return keras.Model(inputs, outputs, name=model.name)


def _factor_sizes(layer):
    """The sizes of a Dense/Conv layer's K-FAC factors `A` (kernel inputs, +1 for the bias) and `S`."""
    kernel_shape = tuple(layer.kernel.shape)
    inputs = math.prod(kernel_shape[:-1]) + (1 if layer.use_bias else 0)
    return inputs, int(kernel_shape[-1])


def _check_true_fisher_model(model):
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            "prepare(fisher='true') needs one input and one output of logits (batch, classes). Received "
            f"inputs {[tuple(x.shape) for x in model.inputs]}, outputs {[tuple(x.shape) for x in model.outputs]}."
        )
    for layer in _all_layers(model):
        if layer.weights and type(layer) not in _REPLACEMENTS and not isinstance(layer, keras.Model):
            raise ValueError(
                f"prepare(fisher='true') cannot route the sampled-label copies through layer {layer.name!r} "
                f"({type(layer).__name__}): only Dense/Conv layers may have weights. Use fisher='empirical'."
            )


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
