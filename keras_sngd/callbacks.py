"""Keras callbacks for SNGD training."""

import keras

from keras_sngd.local_fisher import LocalFisher
from keras_sngd.validation import check_bool


class FunctionPreservingRefresh(keras.callbacks.Callback):
    """Refresh every `LocalFisher` between steps on the JAX backend; a no-op elsewhere. Optional.

    On TensorFlow and PyTorch the refresh of `U = G^(-1/2)` runs inside the train step and re-expresses
    the consumers' kernels there, `W' <- G^(1/2) U_old W'`, so that the effective weights `U W'` and the
    model's outputs do not change. The JAX trainer drops assignments to trainable variables made inside
    its compiled step; there a `LocalFisher` hands the re-expression to the optimizer instead
    (`keras_sngd.handoff`), which needs no callback. This callback is the other way, kept for custom loops
    and for comparison: the refresh runs between steps, from the same statistics, with the same
    trajectory (both take effect one step after the step that made the refresh due). On JAX:

    - `on_train_begin`: every `LocalFisher` of the model stops refreshing inside the train step (it
      keeps updating its statistics and `step` there), gets ready for the trust region
      (`LocalFisher.prepare_handoff()`), and the train function is traced anew;
    - `on_train_batch_end`: on a batch after which a layer's `step` crossed a multiple of its
      `update_every`, the trainer's state is synced back into the model's variables
      (`model.jax_state_sync()`, after which assignments stick: the next step reloads the state from the
      variables) and `layer.refresh()` runs for each layer due: the same Newton-Schulz refresh and
      re-expression of the consumers' kernels as in the train step, from the same statistics;
    - `on_train_end`: the layers refresh inside the train step again.

    With the callback the JAX train step holds no conditional (without it, each LocalFisher adds two: the
    refresh check and the re-expression of its consumer's kernel). XLA's GPU runtime reads a
    conditional's predicate on the host, so on a GPU this path may be the faster one
    (`bash benchmarks/gpu.sh --variants default,between-steps` measures it). The sync runs only on
    batches where a refresh is due. The refresh takes effect from the step after
    the one that made it due (inside the TensorFlow step it takes effect in that step), so JAX and
    TensorFlow trajectories differ by that one step per refresh. With `steps_per_execution > 1`, a layer
    due anywhere in an execution refreshes once, after it.

    Args:
        verbose: bool, print one line per refresh. Defaults to `False`.

    Example:

    ```python
    model = keras_sngd.reconstruct(model)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[keras_sngd.callbacks.FunctionPreservingRefresh()])
    ```
    """

    def __init__(self, verbose=False):
        super().__init__()
        self.verbose = check_bool("verbose", verbose)
        self._layers = []
        self._steps = {}
        self._begin = 0

    @property
    def active(self):
        """Whether the refresh moves out of the train step: on the JAX backend only."""
        return keras.backend.backend() == "jax"

    def on_train_begin(self, logs=None):
        if not self.active:
            return
        self._layers = local_fishers(self.model)
        self._steps = {id(layer): _step(layer) for layer in self._layers}
        for layer in self._layers:
            layer.prepare_handoff()  # the trust region's state, for layers inserted by hand
        for layer in self._layers:
            layer._refresh_outside_step = True
        if self._layers:
            # The step is traced with the flag read in Python: a function traced before must go.
            self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        if not self._layers:
            return
        executed = batch - self._begin + 1
        due = []
        for layer in self._layers:
            before = self._steps[id(layer)]
            after = before + executed
            self._steps[id(layer)] = after
            if after // layer.update_every > before // layer.update_every:
                due.append(layer)
        if not due:
            return
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        for layer in due:
            # The true count (a layer called twice per step counts twice).
            self._steps[id(layer)] = _step(layer)
            refreshed = layer.refresh(only_if_drifted=True)
            if self.verbose:
                print(f"FunctionPreservingRefresh: '{layer.name}' at step {self._steps[id(layer)]}: "
                      f"{'refreshed' if refreshed else 'refresh failed, U kept'}")

    def on_train_end(self, logs=None):
        if not self._layers:
            return
        for layer in self._layers:
            layer._refresh_outside_step = False
        # The next fit traces a step that refreshes inside again.
        self.model.train_function = None
        self._layers = []


def local_fishers(model):
    """Every `LocalFisher` in `model`, nested models included, in the order of `model._flatten_layers()`."""
    # Statistics-only layers (FisherStatistics, for the NGD optimizer) have nothing to re-express.
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, LocalFisher)]


def _step(layer):
    return int(keras.ops.convert_to_numpy(layer.step.value)) if layer.built else 0
