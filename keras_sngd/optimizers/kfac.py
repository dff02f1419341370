"""`KFAC`: Kronecker-factored approximate curvature (the paper's K-FAC baseline) as a Keras optimizer."""

import keras
from keras import ops

from keras_sngd.linear_algebra import trace
from keras_sngd.optimizers.kfac_layers import KFACLayerMixin
from keras_sngd.optimizers.kfac_layers import prepare
from keras_sngd.validation import check_bool
from keras_sngd.validation import check_float
from keras_sngd.validation import check_int


@keras.saving.register_keras_serializable(package="keras_sngd")
class KFAC(keras.optimizers.SGD):
    """K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) in plain `model.fit`.

    Use it on a model from `keras_sngd.optimizers.prepare_kfac(model)`, whose Dense and Conv layers keep
    the Kronecker factors `A = E[a a^T]` (inputs, with a 1 for the bias) and `S = E[g g^T]` (per-example
    gradients of the pre-activations) of their Fisher block `F ~ A (x) S` (see
    `keras_sngd.optimizers.kfac_layers`). The optimizer finds those layers through the kernels it is
    given, so no extra call is needed, also after `keras.models.load_model`.

    **Each training step**, for every K-FAC layer, with `G = [dL/dW; dL/db]` (the kernel reshaped to
    `(inputs, units)`, the bias as one more row):

    ```
    every `update_every` steps (step % update_every == 0, so also the first):
        pi    = sqrt((tr(A) / dim A) / (tr(S) / dim S))              # factored Tikhonov damping
        A_inv = (A + pi * sqrt(damping) I)^-1                         # Martens & Grosse 2015, Sec. 6.3
        S_inv = (S + sqrt(damping) / pi I)^-1
    P  = A_inv G S_inv                                               # the preconditioned gradient
    nu = min(1, sqrt(kl_clip / (lr^2 * sum_layers <P, G>)))           # KL clipping (Ba et al. 2017)
    G <- nu * P
    ```

    then the SGD step with `momentum` (and `nesterov`) on every variable: `v <- momentum * v - lr * G`,
    `w <- w + v`. Variables outside K-FAC layers (normalization layers, embeddings, ...) take the plain
    SGD step with their raw gradient. `damping`, `kl_clip`, `update_every` and `momentum` were chosen
    with `benchmarks/kfac_comparison.py` (see its docstring). The inverses are optimizer variables (saved with the optimizer);
    `keras.ops.linalg.inv` computes them.

    With `prepare_kfac(model)` the factors use the empirical Fisher (`g` is the gradient of the training
    loss at the true labels); `prepare_kfac(model, fisher="true")` gives the true Fisher's `S` from
    sampled labels. The optimizer is the same for both.

    **Not handled** (a `ValueError` says so): `loss_scale_factor` and float16 mixed precision (loss
    scaling scales `S`), `gradient_accumulation_steps` (the factors would see partial batches), and
    distribution strategies. The loss must be a mean over the batch (Keras's default
    `"sum_over_batch_size"` reduction), since `S` multiplies `dL/dz` by the batch size;
    `check_kfac_model(model)` checks a compiled model.

    Args:
        learning_rate: float or schedule. While the KL clip binds (on the paper's MLP it binds on every
            step for any learning rate from 0.01 up), the step is `sqrt(kl_clip / <P, G>) P` and does not
            depend on it. Defaults to `0.1`.
        momentum: float >= 0, SGD momentum. Defaults to `0.9`.
        damping: float > 0, the Tikhonov damping `lambda`; each factor gets `sqrt(lambda)` (scaled by
            `pi`). Defaults to `1e-3`.
        kl_clip: float > 0 or None, the KL-clipping bound `kappa`. None turns clipping off; then the
            learning rate must be small (on the paper's MLP, 0.001 trained and 0.003 diverged).
            Defaults to `1e-4`.
        update_every: int >= 1, steps between refreshes of the inverses. Defaults to `20`.
        nesterov: bool, Nesterov momentum. Defaults to `False`.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`weight_decay`, `clipnorm`, `name`, ...).

    Example:

    ```python
    kfac_model = keras_sngd.optimizers.prepare_kfac(model)
    kfac_model.compile(keras_sngd.optimizers.KFAC(learning_rate=0.05), loss="sparse_categorical_crossentropy")
    kfac_model.fit(x, y, batch_size=64)
    ```

    References:
        Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", 2015.
        Grosse & Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers", 2016.
        Ba, Grosse & Martens, "Distributed Second-Order Optimization using Kronecker-Factored
        Approximations", 2017 (KL clipping).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        damping=1e-3,
        kl_clip=1e-4,
        update_every=20,
        nesterov=False,
        name="kfac",
        **kwargs,
    ):
        if kwargs.get("loss_scale_factor") is not None:
            raise ValueError(
                "KFAC does not handle `loss_scale_factor`: loss scaling scales the factor S. "
                f"Received: loss_scale_factor={kwargs['loss_scale_factor']!r}"
            )
        if kwargs.get("gradient_accumulation_steps"):
            raise ValueError(
                "KFAC does not handle `gradient_accumulation_steps`: its factors are updated from every batch. "
                f"Received: gradient_accumulation_steps={kwargs['gradient_accumulation_steps']!r}"
            )
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs)
        self.damping = check_float("damping", damping, 0.0, exclusive_minimum=True)
        self.kl_clip = check_float("kl_clip", kl_clip, 0.0, exclusive_minimum=True, allow_none=True)
        self.update_every = check_int("update_every", update_every, 1)
        check_bool("nesterov", nesterov)
        self._blocks = []

    def build(self, var_list):
        if self.built:
            return
        if _distributed():
            raise ValueError("KFAC does not handle distribution strategies or keras.distribution layouts yet.")
        super().build(var_list)
        self._blocks = []
        for variable in var_list:
            layer = getattr(variable, "_kfac_layer", None)
            if layer is None or variable is not layer._kernel:
                continue
            inputs, units = layer.input_factor.shape[0], layer.output_factor.shape[0]
            index = len(self._blocks)
            self._blocks.append(
                _Block(
                    layer=layer,
                    input_inverse=self.add_variable((inputs, inputs), initializer="zeros", name=f"kfac_input_inverse_{index}"),
                    output_inverse=self.add_variable((units, units), initializer="zeros", name=f"kfac_output_inverse_{index}"),
                )
            )
        if not self._blocks:
            raise ValueError(
                "KFAC found no K-FAC layer among the trainable variables. Prepare the model first with "
                "keras_sngd.optimizers.prepare_kfac(model)."
            )

    @property
    def preconditioned_layers(self):
        """Names of the layers whose gradients this optimizer preconditions."""
        return [block.layer.name for block in self._blocks]

    def _backend_apply_gradients(self, grads, trainable_variables):
        grads = self._precondition(list(grads), list(trainable_variables))
        super()._backend_apply_gradients(grads, trainable_variables)

    def _precondition(self, grads, variables):
        positions = {self._var_key(variable): index for index, variable in enumerate(variables)}
        blocks = []
        for block in self._blocks:
            kernel_index = positions.get(self._var_key(block.layer._kernel))
            bias = block.layer.kfac_bias
            bias_index = None if bias is None else positions.get(self._var_key(bias))
            if kernel_index is None or (bias is not None and bias_index is None):
                continue  # a frozen layer: nothing to precondition
            blocks.append((block, kernel_index, bias_index))
        if not blocks:
            return grads
        inverses = self._inverses([block for block, _, _ in blocks])
        preconditioned = []
        for (block, kernel_index, bias_index), (input_inverse, output_inverse) in zip(blocks, inverses):
            kernel_gradient = grads[kernel_index]
            units = kernel_gradient.shape[-1]
            rows = [ops.reshape(ops.cast(kernel_gradient, "float32"), (-1, units))]
            if bias_index is not None:
                rows.append(ops.reshape(ops.cast(grads[bias_index], "float32"), (1, units)))
            gradient = ops.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
            direction = ops.matmul(ops.matmul(input_inverse, gradient), output_inverse)
            preconditioned.append((kernel_index, bias_index, gradient, direction))
        scale = 1.0
        if self.kl_clip is not None:
            learning_rate = ops.cast(self.learning_rate, "float32")
            quadratic = sum(ops.sum(direction * gradient) for _, _, gradient, direction in preconditioned)
            bound = self.kl_clip / ops.maximum(learning_rate * learning_rate * quadratic, 1e-30)
            scale = ops.where(quadratic > 0.0, ops.minimum(1.0, ops.sqrt(bound)), 1.0)
        for kernel_index, bias_index, _, direction in preconditioned:
            direction = direction * scale
            kernel_gradient = grads[kernel_index]
            inputs = direction.shape[0] - (0 if bias_index is None else 1)
            grads[kernel_index] = ops.cast(
                ops.reshape(direction[:inputs], kernel_gradient.shape), kernel_gradient.dtype
            )
            if bias_index is not None:
                grads[bias_index] = ops.cast(ops.reshape(direction[inputs], grads[bias_index].shape), grads[bias_index].dtype)
        return grads

    def _inverses(self, blocks):
        """The damped inverses, refreshed (and stored) every `update_every` steps."""
        due = ops.equal(self.iterations % self.update_every, 0)

        def refresh():
            values = []
            for block in blocks:
                values.extend(damped_inverses(*block.layer.factors(), self.damping))
            return tuple(values)

        def keep():
            values = []
            for block in blocks:
                values.extend([ops.convert_to_tensor(block.input_inverse), ops.convert_to_tensor(block.output_inverse)])
            return tuple(values)

        values = ops.cond(due, refresh, keep)
        pairs = []
        for index, block in enumerate(blocks):
            input_inverse, output_inverse = values[2 * index], values[2 * index + 1]
            block.input_inverse.assign(input_inverse)
            block.output_inverse.assign(output_inverse)
            pairs.append((input_inverse, output_inverse))
        return pairs

    def get_config(self):
        config = super().get_config()
        config.update({"damping": self.damping, "kl_clip": self.kl_clip, "update_every": self.update_every})
        return config


def damped_inverses(input_factor, output_factor, damping):
    """`((A + pi sqrt(damping) I)^-1, (S + sqrt(damping) / pi I)^-1)`, factored Tikhonov damping.

    `pi = sqrt((tr(A) / dim A) / (tr(S) / dim S))` (Martens & Grosse 2015, Sec. 6.3) splits the damping
    between the factors in proportion to their scales; it is 1 while either trace is zero.

    Returns:
        The two inverses, float32 and symmetric.
    """
    input_dim, output_dim = input_factor.shape[0], output_factor.shape[0]
    input_scale = trace(input_factor) / input_dim
    output_scale = trace(output_factor) / output_dim
    positive = (input_scale > 0.0) & (output_scale > 0.0)
    ratio = ops.where(positive, ops.sqrt(ops.maximum(input_scale, 1e-30) / ops.maximum(output_scale, 1e-30)), 1.0)
    root = damping**0.5

    def inverse(matrix, shift):
        dim = matrix.shape[0]
        result = ops.linalg.inv(matrix + shift * ops.eye(dim, dtype="float32"))
        return 0.5 * (result + ops.transpose(result))

    return inverse(input_factor, ratio * root), inverse(output_factor, root / ratio)


def check_kfac_model(model):
    """Raise a `ValueError` if a compiled model breaks what `KFAC` assumes.

    Checks: the optimizer is a `KFAC` (not wrapped in a `LossScaleOptimizer`), the model has K-FAC layers,
    and every loss averages over the batch (reduction `"sum_over_batch_size"`).

    Returns:
        `model`.
    """
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("KFAC does not handle a LossScaleOptimizer (float16 loss scaling scales the factor S).")
    if not isinstance(optimizer, KFAC):
        raise ValueError(f"The model is not compiled with KFAC. Received: optimizer={optimizer!r}")
    if not any(isinstance(layer, KFACLayerMixin) for layer in model._flatten_layers()):
        raise ValueError("The model has no K-FAC layer; prepare it with keras_sngd.optimizers.prepare_kfac(model).")
    losses = getattr(getattr(model, "_compile_loss", None), "_user_loss", None) or getattr(model, "loss", None)
    for loss in keras.tree.flatten(losses) if losses is not None else []:
        reduction = getattr(loss, "reduction", "sum_over_batch_size")
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"KFAC needs a loss averaged over the batch (reduction='sum_over_batch_size'). Received: "
                f"reduction={reduction!r}"
            )
    return model


def build_kfac_training(plain_model, learning_rate, **options):
    """`(model_to_fit, optimizer)`: the K-FAC version of `plain_model` and its `KFAC` optimizer.

    With the default KL clip the learning rate rarely matters (see `KFAC`): to tune K-FAC, vary
    `kl_clip` (e.g. 3e-5, 1e-4, 3e-4, 1e-3) rather than the learning rate.

    Args:
        plain_model: a built Sequential or Functional model with Dense/Conv layers.
        learning_rate: float > 0.
        **options: other `KFAC` arguments (`kl_clip`, `damping`, `momentum`, `update_every`, ...).

    Returns:
        `(prepare_kfac(plain_model), KFAC(learning_rate, **options))`; compile and fit the model with the
        optimizer.
    """
    learning_rate = check_float("learning_rate", learning_rate, 0.0, exclusive_minimum=True)
    return prepare(plain_model), KFAC(learning_rate=learning_rate, **options)


class _Block:
    def __init__(self, layer, input_inverse, output_inverse):
        self.layer = layer
        self.input_inverse = input_inverse
        self.output_inverse = output_inverse


def _distributed():
    if keras.distribution.distribution() is not None:
        return True
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
    return False
