"""`FisherStatistics`: the local Fisher statistics without the reconstruction (for the NGD baseline)."""

import keras

from keras_sngd.fisher_layer import FisherLayer
from keras_sngd.refresh import STATISTICS_ONLY
from keras_sngd.refresh import RefreshMode


@keras.saving.register_keras_serializable(package="keras_sngd")
class FisherStatistics(FisherLayer):
    """Keeps the local Fisher matrix of its input, like `LocalFisher`, but passes the input through.

    The baseline of the paper's Table V: natural gradient descent preconditions the gradient instead of
    reconstructing the network. This layer collects exactly the statistics `LocalFisher` collects and
    refreshes the same `inverse_root` `U` (with `U U^T = G^-1`) every `update_every` training steps (same
    arguments, same guards, same mask and frozen-layer rules), but its output is its input (`y = x`, also
    with `center=True`), and no weights are re-expressed. `keras_sngd.optimizers.NGD` reads `inverse_root`
    to step `W <- W - lr * U U^T * dL/dW` on the layers it feeds.

    Insert it with `keras_sngd.reconstruct(model, layer_class=FisherStatistics)`; arguments as for
    `LocalFisher`.
    """

    def _transform(self, inputs, inverse_root, shift, root=()):
        return inputs

    def _refresh_plan(self, in_step):
        return [], RefreshMode(STATISTICS_ONLY, "for keras_sngd.optimizers.NGD, which preconditions the gradients")
