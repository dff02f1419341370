"""`NGD`: per-layer natural gradient descent with the local Fisher matrices (the paper's NGD baseline)."""

import keras
from keras import ops

from keras_sngd.consumers import consumers_of
from keras_sngd.fisher_statistics import FisherStatistics
from keras_sngd.graph import walk_layers


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
    optimizer would see stale values, so `attach` refuses it there. An optimizer restored with a model by
    `keras.saving.load_model` knows no model: call `model.optimizer.attach(model)` before training again.
    An NGD that is not attached refuses to train rather than take plain SGD steps.

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
        """Find every kernel fed by a `FisherStatistics` layer of `model` (also in nested models).

        The consumers are those of `keras_sngd.consumers.consumers_of`, within the model that holds the
        layer. A consumer without weights (an `Add`, a raw operation) needs no preconditioning; a consumer
        with weights that cannot be preconditioned (a layer also called on other inputs, a composite
        layer, a nested model) raises a ValueError, and so does a model with nothing to precondition.

        Args:
            model: the Functional or Sequential model being trained, e.g. from
                `keras_sngd.reconstruct(model, layer_class=keras_sngd.FisherStatistics)`; after
                `keras.saving.load_model`, the loaded model (`model.optimizer.attach(model)`).

        Returns:
            This optimizer.
        """
        if keras.backend.backend() == "jax":
            raise ValueError(
                "NGD reads FisherStatistics state inside the optimizer step, which the JAX trainer does not "
                "see; use the TensorFlow backend for the NGD baseline (SNGD itself runs on JAX)."
            )
        self._preconditioned = {}
        for owner, layer in walk_layers(model):
            if not isinstance(layer, FisherStatistics):
                continue
            for consumer in consumers_of(layer, owner):
                if consumer.binding is not None:
                    self._preconditioned[self._var_key(consumer.binding.kernel)] = (layer, consumer.binding)
                elif getattr(consumer.operation, "trainable_weights", None):
                    # Its kernel would silently take plain SGD steps.
                    raise ValueError(
                        f"FisherStatistics {layer.name!r} cannot precondition consumer "
                        f"'{consumer.operation.name}': {consumer.reason}"
                    )
        if not self._preconditioned:
            raise ValueError(
                f"Model {model.name!r} has no FisherStatistics layer feeding a Dense/Conv/RNN kernel. "
                "Create one with keras_sngd.reconstruct(model, layer_class=keras_sngd.FisherStatistics)."
            )
        return self

    def apply(self, grads, trainable_variables=None):
        if not self._preconditioned:
            # A compiled NGD restored by `keras.saving.load_model` knows no model: without this it would
            # silently take plain SGD steps.
            raise ValueError(
                "NGD is not attached to a model, so it knows no kernel to precondition and would train as plain "
                "SGD. Call `optimizer.attach(model)` before training; after `keras.saving.load_model`, call "
                "`model.optimizer.attach(model)`."
            )
        return super().apply(grads, trainable_variables)

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
