"""`StepBound`: the trust region for a layer SNGD cannot whiten.

Depthwise and separable convolutions filter each input channel separately, and grouped convolutions mix
channels only within a group: no kernel of theirs can absorb a mixing `U` of all input channels
(`keras_sngd.binding`), so `reconstruct` puts no LocalFisher before them and they take plain optimizer
steps. In a network where the layers around them are whitened, those steps are not plain SGD's any more:
their gradients pass back through the whitened layers' effective kernels `W = U W'`, which are large
where `U` amplifies small inputs, and nothing bounds them. Measured on a CNN with a depthwise and a
separable convolution (`python benchmarks/architectures.py --models separable_cnn`, 8,192 Fashion-MNIST
images): with only the LocalFishers' trust region SNGD ended at chance at learning rates 0.3 and 0.1 while
the depthwise kernel grew, and with the depthwise and separable convolutions frozen it trained at both.

A `StepBound` before such a layer is the identity in the forward pass and bounds the layer's optimizer
step as the LocalFisher's trust region bounds its consumers' (`keras_sngd.trust_region.bounded_step`):

```
step_i = w_i(after the optimizer) - w_i(before)          # every trainable weight of the layer
scale  = min(1, max_step * ||w(before)|| / ||step||)     # joint norms over the layer's weights
w_i   <- w_i(before) + scale * step_i
```

through the same two mechanisms (`keras_sngd.handoff`), so that it works inside every backend's compiled
update: carrier variables the optimizer overwrites with the layer's weights as the forward pass read them,
and a constraint on the layer's first weight that bounds all of them right after the optimizer's update.
`reconstruct` inserts one before each trainable depthwise, separable or grouped convolution when the
LocalFishers have a trust region (`max_step`), with the same radius, except where the layer's output goes
straight into a normalization layer (`keras_sngd.layer_defaults.feeds_normalization`: normalization
makes its output independent of its weights' scale, and bounding such layers cost training loss on
MobileNetV2), and `fold` drops it. It also puts one before a layer it leaves plain because its input is
wider than `reconstruct(max_features=...)` (`keras_sngd.width`), for the same reason.
"""

import warnings
import weakref

import keras
from keras import ops
from keras.src.backend.common.variables import AutocastScope

from keras_sngd.handoff import _calling_optimizer
from keras_sngd.handoff import CarriersLeftOut
from keras_sngd.handoff import carrier
from keras_sngd.handoff import hand_over
from keras_sngd.fisher_layer import forward_pass
from keras_sngd.graph import first_tensor
from keras_sngd.trust_region import bounded_step
from keras_sngd.validation import check_float


@keras.saving.register_keras_serializable(package="keras_sngd")
class StepBound(CarriersLeftOut, keras.layers.Layer):
    """The identity, bounding the optimizer step of the layer it feeds (see the module docstring).

    Args:
        max_step: float > 0, the largest step of the layer's weights relative to their norm. Defaults to
            0.05 (`reconstruct` passes the LocalFishers' `max_step`).
        **kwargs: base `Layer` arguments (e.g. `name`).

    The layer it bounds is the one layer that takes its output as its first input; call `prepare()` once the
    model is built (`reconstruct` and `keras.saving.load_model` do) to create the carriers and install the
    constraint. Until then, and without a single such layer, it is the identity and bounds nothing (a
    training call says so once, with a warning). A prepared layer's config lists its carriers' shapes, so
    that a copy built from it (`keras.models.clone_model`) creates them at build and binds them at its
    first training call. By hand:

    ```python
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras_sngd.StepBound(max_step=0.05),
        keras.layers.DepthwiseConv2D(3, activation="relu"),
        ...
    ])
    for layer in model.layers:
        if isinstance(layer, keras_sngd.StepBound):
            layer.prepare()
    ```
    """

    def __init__(self, max_step=0.05, **kwargs):
        super().__init__(**kwargs)
        self.max_step = check_float("max_step", max_step, minimum=0.0, exclusive_minimum=True)
        self.supports_masking = True
        object.__setattr__(self, "_bounded", None)  # (the layer, its trainable weights, their carriers)
        object.__setattr__(self, "_pass", None)  # weak reference to the forward pass that handed over last
        object.__setattr__(self, "_warned", False)
        # The carriers built for the plan of the prepared layer this one was copied from (`_carrier_plan`,
        # `keras_sngd.handoff.CARRIER_PLAN`), bound at `prepare()` or the first training call.
        object.__setattr__(self, "_planned_carriers", None)

    def build(self, input_shape):
        if self._carrier_plan:
            # Created now, in the original's order, so that the copy holds the original's weight list.
            carriers = [carrier(self, f"previous_{index}", tuple(shape)) for index, shape in enumerate(self._carrier_plan)]
            object.__setattr__(self, "_planned_carriers", carriers)
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def _saved_variables(self):
        return []  # no state (what `keras_sngd.graph.copy_weights` copies)

    def save_own_variables(self, store):
        pass  # no state: the carriers are transient

    def load_own_variables(self, store):
        # The model's graph is complete when a saved model's state is loaded.
        self.prepare()

    def bounded_layer(self):
        """The layer whose steps this bounds: the one operation that takes this layer's output as its first
        input, if it is a layer with trainable weights; else None."""
        consumers = {
            id(node.operation): node.operation
            for node in self._outbound_nodes
            if any(first_tensor(node.arguments.args, node.arguments.kwargs) is tensor for tensor in _outputs(self))
        }
        if len(consumers) != 1:
            return None
        (layer,) = consumers.values()
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model) or not layer.trainable_weights:
            return None
        return layer

    def prepare(self):
        """Create the carriers of the bounded layer's weights and install the constraint (once), outside the
        train step. A no-op before the layer is called in a graph."""
        self._prepare(create=True)

    def _prepare(self, create):
        """`prepare()`; with `create` False only with the carriers built from the config's plan (no variable
        is created: it may run in a trace), and only where their shapes match the bounded layer's weights."""
        if self._bounded is not None:
            return
        layer = self.bounded_layer()
        if layer is None or not layer.built:
            return
        weights = list(layer.trainable_weights)
        planned = self._planned_carriers
        if planned is not None and [tuple(c.shape) for c in planned] == [tuple(w.shape) for w in weights]:
            carriers = planned
        elif not create:
            return
        else:
            self._tracker.unlock()  # state added after build, as Keras's own `Dense.enable_lora` does
            try:
                carriers = [carrier(self, f"previous_{index}", weight.shape) for index, weight in enumerate(weights)]
            finally:
                self._tracker.lock()
        object.__setattr__(self, "_planned_carriers", None)
        object.__setattr__(self, "_bounded", (layer, weights, carriers))
        first = weights[0]
        if not isinstance(first.constraint, StepBoundConstraint):
            first.constraint = StepBoundConstraint(self, previous=first.constraint)

    def call(self, inputs, training=None):
        if training and self._bounded is None and self._planned_carriers is not None:
            self._prepare(create=False)  # a copy of a prepared layer (`keras.models.clone_model`)
        bounded = self._bounded
        if training and bounded is None and not self._warned and self.bounded_layer() is not None:
            object.__setattr__(self, "_warned", True)
            warnings.warn(
                f"StepBound '{self.name}' bounds nothing: it is not prepared. Call its prepare() once the model "
                "is built and before fit (reconstruct and keras.saving.load_model do it for you).",
                stacklevel=2,
            )
        if not training or bounded is None:
            return inputs
        layer, weights, carriers = bounded
        if not (layer.trainable and all(weight.trainable for weight in weights)):
            return inputs
        # Once per forward pass: a later call of the same pass (a layer shared by several call sites) would
        # add the weights to the carriers' "gradient" a second time.
        context = forward_pass(self)
        if self._pass is not None and self._pass() is context:
            return inputs
        object.__setattr__(self, "_pass", weakref.ref(context))
        # The weights as this forward pass reads them, in their own dtype (under a mixed precision policy a
        # layer's call reads float variables as casts to the compute dtype): the optimizer copies them into
        # the carriers.
        with AutocastScope(None):
            values = [ops.convert_to_tensor(weight) for weight in weights]
        return hand_over(inputs, carriers, values)

    def get_config(self):
        return dict(super().get_config(), max_step=self.max_step)

    def _current_carrier_plan(self):
        """The shapes of the carriers of the bounded layer's trainable weights, in order
        (`keras_sngd.handoff.CARRIER_PLAN`)."""
        if self._bounded is not None:
            return [list(c.shape) for c in self._bounded[2]]
        return self._carrier_plan


class StepBoundConstraint(keras.constraints.Constraint):
    """The constraint a `StepBound` installs on the first weight of the layer it bounds: right after the
    optimizer's update, every trainable weight of that layer is moved back toward its value before the
    update so that the joint step is at most `max_step` times their norm; the others are assigned here."""

    installed_by_sngd = True

    def __init__(self, step_bound, previous=None):
        self.step_bound = step_bound
        self.previous = previous

    def __call__(self, first):
        step_bound = self.step_bound
        _refuse_accumulation(step_bound, _calling_optimizer())
        layer, weights, carriers = step_bound._bounded
        values = [ops.convert_to_tensor(first)] + [ops.convert_to_tensor(weight) for weight in weights[1:]]
        bounded, _ = bounded_step(values, [ops.convert_to_tensor(c) for c in carriers], step_bound.max_step,
                                  weights[0].shape[-1])
        for weight, value in zip(weights[1:], bounded[1:]):
            weight.assign(value)
        result = bounded[0]
        if self.previous is not None:
            result = self.previous(result)
        return result

    def get_config(self):
        return {}  # installed on the variable only, not in any config


def _outputs(layer):
    return [tensor for node in layer._inbound_nodes for tensor in node.output_tensors]


def _refuse_accumulation(step_bound, optimizer):
    steps = getattr(optimizer, "gradient_accumulation_steps", None)
    if steps:
        raise ValueError(
            f"StepBound '{step_bound.name}' cannot work with the optimizer's gradient_accumulation_steps="
            f"{steps!r}: its trust region goes through variables the optimizer overwrites with their "
            "'gradient', and an accumulating Keras optimizer merges those by an elementwise maximum over the "
            "window. Pass max_step=None to reconstruct (local_fisher_arguments={'max_step': None}) to train "
            "without the trust region, or use a larger batch instead of accumulation."
        )
