"""`NGD`: per-layer natural gradient descent with the local Fisher matrices (the paper's NGD baseline)."""

import keras
from keras import ops

from keras_sngd.binding import binding_for
from keras_sngd.fisher_statistics import FisherStatistics
from keras_sngd.graph import consumers_in


@keras.saving.register_keras_serializable(package="keras_sngd")
class NGD(keras.optimizers.SGD):
    """Natural gradient descent with the local Fisher matrices of `FisherStatistics` layers.

    For every kernel fed by a `FisherStatistics` layer (whose `inverse_root` is `U = G^(-1/2)`):

    ```
    g <- G^-1 g = U U g          (on the kernel's input-feature axis, as in `keras_sngd.binding`)
    then the SGD step (with momentum / nesterov if set):  w <- w - lr * g
    ```

    Every other variable (biases, normalization layers, layers without statistics) takes the plain SGD
    step. This is the paper's Table V baseline: the same statistics and the same `G` as SNGD, used to
    precondition gradients instead of reconstructing the network, so the two differ only in where the
    cost goes (SNGD: `U x` in every forward pass; NGD: `U U g` on every kernel gradient).

    Call `attach(model)` (returns the optimizer) before `compile`, on a model with `FisherStatistics`
    layers, e.g. from `keras_sngd.reconstruct(model, layer_class=FisherStatistics)`. It reads the layers'
    `inverse_root` inside the compiled train step, which the TensorFlow backend supports; on JAX the
    optimizer would see stale values, so `attach` refuses it there.

    Args:
        learning_rate: as for `keras.optimizers.SGD`. Defaults to `0.01`.
        momentum, nesterov, **kwargs: as for `keras.optimizers.SGD`.

    Example:

    ```python
    ngd_model = keras_sngd.reconstruct(model, layer_class=keras_sngd.FisherStatistics)
    optimizer = keras_sngd.optimizers.NGD(learning_rate=0.1).attach(ngd_model)
    ngd_model.compile(optimizer=optimizer, loss=...)
    ```
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="ngd", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs)
        self._preconditioned = {}

    def attach(self, model):
        """Find every kernel fed by a `FisherStatistics` layer of `model` (also in nested models)."""
        if keras.backend.backend() == "jax":
            raise ValueError(
                "NGD reads FisherStatistics state inside the optimizer step, which the JAX trainer does not "
                "see; use the TensorFlow backend for the NGD baseline (SNGD itself runs on JAX)."
            )
        self._preconditioned = {}
        for owner, layer in _layers_with_owner(model):
            if not isinstance(layer, FisherStatistics):
                continue
            for consumer in consumers_in(owner, layer):
                binding, reason = binding_for(consumer)
                if binding is None:
                    raise ValueError(f"FisherStatistics {layer.name!r} feeds {consumer.name!r}: {reason}")
                self._preconditioned[self._var_key(binding.kernel)] = (layer, binding)
        if not self._preconditioned:
            raise ValueError(
                f"Model {model.name!r} has no FisherStatistics layer feeding a Dense/Conv/RNN kernel. "
                "Create one with keras_sngd.reconstruct(model, layer_class=keras_sngd.FisherStatistics)."
            )
        return self

    @property
    def preconditioned_variables(self):
        """Paths of the kernels this optimizer preconditions."""
        return [binding.kernel.path for _, binding in self._preconditioned.values()]

    def update_step(self, gradient, variable, learning_rate):
        entry = self._preconditioned.get(self._var_key(variable))
        if entry is not None:
            statistics, binding = entry
            inverse_root = ops.convert_to_tensor(statistics.inverse_root)
            inverse_fisher = ops.matmul(inverse_root, ops.transpose(inverse_root))
            gradient = binding.mix(inverse_fisher, gradient)
        super().update_step(gradient, variable, learning_rate)


def _layers_with_owner(model):
    for layer in model.layers:
        yield model, layer
        if isinstance(layer, keras.Model):
            yield from _layers_with_owner(layer)
