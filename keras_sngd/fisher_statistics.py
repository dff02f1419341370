"""`FisherStatistics`: the local Fisher statistics without the reconstruction (for the NGD baseline)."""

import keras

from keras_sngd.local_fisher import LocalFisher


@keras.saving.register_keras_serializable(package="keras_sngd")
class FisherStatistics(LocalFisher):
    """Keeps the local Fisher matrix of its input, like `LocalFisher`, but passes the input through.

    The baseline of the paper's Table V: natural gradient descent preconditions the gradient instead of
    reconstructing the network. This layer collects exactly the statistics `LocalFisher` collects and
    refreshes the same `inverse_root = G^(-1/2)` every `update_every` training steps (same arguments, same
    guards), but its output is its input (`y = x`, also with `center=True`), and no weights are
    re-expressed. `keras_sngd.optimizers.NGD` reads `inverse_root` to step
    `W <- W - lr * G^-1 * dL/dW` on the layers it feeds.

    Insert it with `keras_sngd.reconstruct(model, layer_class=FisherStatistics)`; arguments as for
    `LocalFisher`.
    """

    def call(self, inputs, training=None):
        if training:
            self._update(inputs)
        return inputs

    def consumer_bindings(self):
        return [], "statistics only: the NGD optimizer preconditions the gradients"

    def _note_refresh_mode(self, bindings, reason):
        self.refresh_mode = "statistics only (for keras_sngd.optimizers.NGD)"
