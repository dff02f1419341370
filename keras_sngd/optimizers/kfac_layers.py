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
"""

import math

import keras
from keras import ops

from keras_sngd.validation import check_float

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

    def _check_factor_decay(self, factor_decay):
        return check_float("factor_decay", factor_decay, 0.0, 1.0, exclusive_maximum=True)

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
        decay = self.factor_decay

        @ops.custom_gradient
        def probe(outputs, input_factor, old_input, old_output, old_weight):
            def grad(*args, upstream=None, variables=None):
                if upstream is None:
                    (upstream,) = args
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
        return config


@keras.saving.register_keras_serializable(package="keras_sngd")
class KFACDense(KFACLayerMixin, keras.layers.Dense):
    """`keras.layers.Dense` that keeps its K-FAC factors `A` and `S` (see the module docstring).

    Training: `z = x W + b`, the factors are updated from `x` and `dL/dz`, then `activation(z)`.
    Inference: exactly `keras.layers.Dense`. LoRA and quantized modes are not supported.

    Args:
        factor_decay: float in [0, 1), the running averages' decay. Defaults to `0.95`.
        *args, **kwargs: as for `keras.layers.Dense`.
    """

    def __init__(self, *args, factor_decay=KFAC_DEFAULT_FACTOR_DECAY, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor_decay = self._check_factor_decay(factor_decay)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_factors()

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode is not None:
            raise ValueError(f"KFACDense '{self.name}' does not support LoRA or quantization.")
        outputs = ops.matmul(inputs, self._kernel)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if training:
            outputs = self._probe(outputs, input_factor_batch(inputs))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

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

    def call(self, inputs, training=None):
        if self.lora_enabled:
            raise ValueError(f"{type(self).__name__} '{self.name}' does not support LoRA.")
        padding = self.padding
        if padding == "causal":
            inputs = ops.pad(inputs, [[0, 0], [self.dilation_rate[0] * (self.kernel_size[0] - 1), 0], [0, 0]])
            padding = "valid"
        outputs = ops.conv(
            inputs, self._kernel, strides=list(self.strides), padding=padding, dilation_rate=self.dilation_rate
        )
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1,) * (self.rank + 1) + (self.filters,)))
        if training:
            patches = conv_patches(inputs, self.kernel_size, list(self.strides), padding, self.dilation_rate)
            outputs = self._probe(outputs, input_factor_batch(patches))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        return self._kfac_config(super().get_config())


def _conv_class(base):
    def __init__(self, *args, factor_decay=KFAC_DEFAULT_FACTOR_DECAY, **kwargs):
        base.__init__(self, *args, **kwargs)
        self.factor_decay = self._check_factor_decay(factor_decay)

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


def prepare(model, factor_decay=KFAC_DEFAULT_FACTOR_DECAY):
    """A copy of `model` whose Dense/Conv1D/2D/3D layers keep K-FAC factors, for `keras_sngd.optimizers.KFAC`.

    Every layer whose class is exactly `keras.layers.Dense`, `Conv1D`, `Conv2D` or `Conv3D` becomes its
    K-FAC version (`KFACDense`, `KFACConv2D`, ...) with the same configuration and weights; every other
    layer is cloned unchanged (also inside nested models) and takes the plain SGD step in `KFAC`. The copy
    computes the same outputs as `model`.

    Args:
        model: a built Sequential or Functional model.
        factor_decay: float in [0, 1), decay of the factors' running averages. Defaults to `0.95`.

    Returns:
        The prepared model (not compiled).

    Example:

    ```python
    kfac_model = keras_sngd.optimizers.prepare_kfac(model)
    kfac_model.compile(keras_sngd.optimizers.KFAC(0.05), loss=...)
    ```
    """
    factor_decay = check_float("factor_decay", factor_decay, 0.0, 1.0, exclusive_maximum=True)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built keras.Model. Received: model={model!r}")
    replaced = []

    def clone(layer):
        replacement = _REPLACEMENTS.get(type(layer))
        if replacement is None:
            return layer.__class__.from_config(layer.get_config())
        replaced.append(layer.name)
        return replacement.from_config({**layer.get_config(), "factor_decay": factor_decay})

    prepared = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if not replaced:
        raise ValueError(f"Model {model.name!r} has no Dense or Conv1D/2D/3D layer for K-FAC.")
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
    return prepared


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
