"""Graph corners where the consumer rule of `keras_sngd.consumers` decides: a whitened tensor used at a
non-first input, a layer shared with a plain input, dtype casts under mixed precision, raw operations,
composite layers, and NGD restored from a `.keras` file."""

import importlib.util
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from tests.inputs import assert_outputs_close
from tests.inputs import sample_inputs

import keras_sngd
from keras_sngd import FisherStatistics
from keras_sngd import LocalFisher
from keras_sngd.consumers import consumer_bindings
from keras_sngd.consumers import consumers_of
from keras_sngd.optimizers.ngd import NGD


def train_at_zero_learning_rate(model, steps=2, batch=16):
    """Refreshes with `update_every=1` but no SGD step: any change of the outputs is the refresh's."""
    inputs = sample_inputs(model, batch)
    outputs = model(inputs)
    targets = [np.zeros(o.shape, "float32") for o in (outputs if isinstance(outputs, list) else [outputs])]
    model.compile(keras.optimizers.SGD(0.0), "mse")
    for _ in range(steps):
        model.train_on_batch(inputs, targets if len(targets) > 1 else targets[0])


def test_whitened_tensor_at_a_non_first_input_is_not_absorbed():
    inputs = keras.Input((6,))
    whitened = LocalFisher(refresh_tolerance=0, update_every=1, name="lf")(inputs)
    outputs = keras.layers.Add(name="add")([keras.layers.Dense(6, name="dense")(whitened), whitened])
    model = keras.Model(inputs, outputs)
    consumers = {c.operation.name: c for c in consumers_of(model.get_layer("lf"), model)}
    assert set(consumers) == {"dense", "add"} and consumers["add"].position == 1
    assert consumers["dense"].binding is not None and consumers["add"].binding is None
    with pytest.warns(UserWarning, match="cannot keep the model's function.*consumer 'add'"):
        train_at_zero_learning_rate(model)
    assert model.get_layer("lf").refresh_mode.kind == "replacing"
    folded = keras_sngd.fold(model)
    assert "lf_mixing" in [layer.name for layer in folded.layers]  # both paths keep U
    probe = sample_inputs(model)
    assert_outputs_close(folded(probe), model(probe))


def test_layer_shared_with_a_plain_input_is_not_re_expressed():
    a, b = keras.Input((6,)), keras.Input((6,))
    shared = keras.layers.Dense(4, name="shared")
    local_fisher = LocalFisher(refresh_tolerance=0, update_every=1, name="lf")
    model = keras.Model([a, b], [shared(local_fisher(a)), shared(b)])
    bindings, reason = consumer_bindings(local_fisher, model)
    assert not bindings and "also called on inputs that do not come from this LocalFisher" in reason
    probe = sample_inputs(model)
    plain_output = np.asarray(model(probe)[1])
    with pytest.warns(UserWarning, match="also called on inputs"):
        train_at_zero_learning_rate(model)
    assert int(local_fisher.refresh_count.numpy()) == 2
    # The refresh moved U but left the shared kernel alone: the plain call's output has not moved.
    np.testing.assert_array_equal(np.asarray(model(probe)[1]), plain_output)
    assert_outputs_close(keras_sngd.fold(model)(probe), model(probe))


def test_consumers_are_scoped_to_the_model():
    """A layer called again in another graph is shared there, not in the model that is trained."""
    inputs = keras.Input((6,))
    local_fisher = LocalFisher(name="lf")
    dense = keras.layers.Dense(3, name="dense")
    model = keras.Model(inputs, dense(local_fisher(inputs)))
    other = keras.Input((6,))
    keras.Model(other, dense(other))
    assert [b.layer for b in consumer_bindings(local_fisher, model).bindings] == [dense]
    assert not consumer_bindings(local_fisher).bindings  # every graph: the other call counts


def test_ngd_restored_from_keras_file_must_be_attached(tmp_path):
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)])
    model = keras_sngd.reconstruct(plain, layer_class=FisherStatistics, local_fisher_arguments={"update_every": 1})
    model.compile(NGD(0.1).attach(model), "mse")
    inputs = sample_inputs(model, 16)
    targets = np.zeros((16, 3), "float32")
    model.train_on_batch(inputs, targets)
    path = os.path.join(tmp_path, "ngd.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.optimizer, NGD) and not restored.optimizer.preconditioned_variables
    with pytest.raises(ValueError, match="not attached.*model.optimizer.attach"):
        restored.train_on_batch(inputs, targets)
    restored.optimizer.attach(restored)
    assert restored.optimizer.preconditioned_variables == [
        layer.kernel.path for layer in restored.layers if isinstance(layer, keras.layers.Dense)
    ]
    # Attached, the restored model continues the original's NGD trajectory.
    model.train_on_batch(inputs, targets)
    restored.train_on_batch(inputs, targets)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_float32_head(policy):
    keras.config.set_dtype_policy(policy)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    whitened = LocalFisher(refresh_tolerance=0, update_every=1, name="lf")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32", name="head")(whitened))
    probe = sample_inputs(model)
    before = np.asarray(model(probe))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "cannot keep the model's function"
        train_at_zero_learning_rate(model)
    local_fisher = model.get_layer("lf")
    assert str(local_fisher.refresh_mode) == "function-preserving (re-expresses 'head')"
    assert int(local_fisher.refresh_count.numpy()) == 2
    assert not np.allclose(local_fisher.inverse_root.numpy(), np.eye(8))
    # U x is computed in the half-precision compute dtype: the function is kept up to its rounding.
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    assert_outputs_close(model(probe), before, rtol=tolerance)
    folded = keras_sngd.fold(model)
    assert not any(isinstance(layer, LocalFisher) for layer in folded.layers)
    assert_outputs_close(folded(probe), model(probe), rtol=tolerance)


def test_raw_operations_pass_through_reconstruct_and_fold():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(6, activation="tanh", name="first")(inputs)
    x = keras.layers.Dense(4, name="second")(x + inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x[:, 0:3] * 2.0))
    probe = sample_inputs(model)
    sngd, report = keras_sngd.reconstruct(model, return_report=True, local_fisher_arguments={"update_every": 1})
    assert [row[0] for row in report.inserted] == ["first", "second", "head"] and not report.skipped
    np.testing.assert_array_equal(np.asarray(sngd(probe)), np.asarray(model(probe)))
    train_at_zero_learning_rate(sngd)
    assert all(f.refresh_mode.kind == "function-preserving" for f in sngd.layers if isinstance(f, LocalFisher))
    assert_outputs_close(sngd(probe), model(probe))
    folded = keras_sngd.fold(sngd)
    assert [w.shape for w in folded.weights] == [w.shape for w in model.weights]
    assert_outputs_close(folded(probe), model(probe))


def test_whitened_tensor_into_a_raw_operation_is_not_absorbed():
    inputs = keras.Input((6,))
    whitened = LocalFisher(name="lf")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(whitened) + whitened[:, :2])
    bindings, reason = consumer_bindings(model.get_layer("lf"), model)
    assert not bindings and "GetItem is an operation on tensors, not a layer" in reason


class _Block(keras.layers.Layer):
    """A user's composite layer: Dense layers called inside its own `call`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(6)
        self.gate = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6))

    def call(self, inputs):
        return inputs + self.inner(inputs) * self.gate(inputs)


def test_composite_layers_are_whitened_inside_or_reported_as_composite():
    inputs = keras.Input((5, 6))
    x = _Block(name="block")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    # Its two inner layers read the block's input: one LocalFisher inside, before both.
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert report.skipped == []
    (inner, _, _, features, _), head = report.inserted
    assert inner.startswith("block/") and "+" in inner and features == 6 and head[0] == "head"
    assert isinstance(sngd.get_layer("block"), keras_sngd.InnerWhitening)
    # Left whole (excluded, or for the NGD baseline's statistics layer), it is reported as composite.
    for arguments in ({"exclude": ["block"]}, {"layer_class": keras_sngd.FisherStatistics}):
        _, report = keras_sngd.reconstruct(model, return_report=True, **arguments)
        skipped = {path: reason for path, _, reason in report.skipped}
        assert set(skipped) == {"block"}
        assert [row[0] for row in report.inserted] == ["head"]
    assert "composite layer with 2 Dense/EinsumDense layers inside" in skipped["block"]
    assert "not rewritten" in skipped["block"] and "has no kernel" not in skipped["block"]


def test_explicit_cast_between_local_fisher_and_layer_is_walked_through():
    inputs = keras.Input((6,))
    whitened = LocalFisher(name="lf")(inputs)
    dense = keras.layers.Dense(3, name="dense")
    model = keras.Model(inputs, dense(keras.ops.cast(whitened, "float32")))
    for scope in (model, None):
        (consumer,) = consumers_of(model.get_layer("lf"), scope)
        assert consumer.operation is dense and consumer.binding is not None


def test_reconstruct_under_mixed_precision_keeps_a_float32_head(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(3, dtype="float32", name="head")(hidden))
    sngd, report = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments={"update_every": 1})
    assert [row[0] for row in report.inserted] == ["hidden", "head"]
    assert sngd.get_layer("head").dtype_policy.name == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_at_zero_learning_rate(sngd)
    assert all(f.refresh_mode.kind == "function-preserving" for f in sngd.layers if isinstance(f, LocalFisher))
    again, report = keras_sngd.reconstruct(sngd, return_report=True)
    assert not report.inserted  # the head's input comes from a LocalFisher through the autocast
    path = os.path.join(tmp_path, "mixed.keras")
    sngd.save(path)
    loaded = keras.saving.load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_at_zero_learning_rate(loaded)
    assert str(loaded.get_layer("head_local_fisher").refresh_mode) == "function-preserving (re-expresses 'head')"


def test_consumers_inside_a_nested_model_absorb_u():
    inner_inputs = keras.Input((6,))
    inner = keras.Model(inner_inputs, keras.layers.Dense(3, name="inner_dense")(inner_inputs), name="inner")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, inner(LocalFisher(refresh_tolerance=0, update_every=1, name="lf")(inputs)))
    bindings, reason = consumer_bindings(model.get_layer("lf"), model)
    assert reason is None and [b.layer.name for b in bindings] == ["inner_dense"]
    probe = sample_inputs(model)
    before = np.asarray(model(probe))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train_at_zero_learning_rate(model)
    assert str(model.get_layer("lf").refresh_mode) == "function-preserving (re-expresses 'inner_dense')"
    assert_outputs_close(model(probe), before)
    folded = keras_sngd.fold(model)
    assert [type(layer).__name__ for layer in folded.layers] == ["InputLayer", "Functional"]  # U absorbed inside
    assert_outputs_close(folded(probe), model(probe))


def test_nested_model_called_on_other_inputs_is_not_absorbed():
    inner_inputs = keras.Input((6,))
    inner = keras.Model(inner_inputs, keras.layers.Dense(3)(inner_inputs), name="inner")
    inputs, other = keras.Input((6,)), keras.Input((6,))
    model = keras.Model([inputs, other], [inner(LocalFisher(name="lf")(inputs)), inner(other)])
    bindings, reason = consumer_bindings(model.get_layer("lf"), model)
    assert not bindings and "consumer 'inner': a nested model also called on inputs" in reason
    local_fisher = model.get_layer("lf")
    local_fisher.inverse_root.assign(np.diag(np.linspace(0.5, 2.0, 6)).astype("float32"))
    probe = sample_inputs(model)
    assert_outputs_close(keras_sngd.fold(model)(probe), model(probe))


def test_lambda_layers_are_copied_from_the_live_function():
    """A Lambda holding a Python lambda: Keras's safe mode refuses to deserialize it (and so does
    `keras.models.clone_model`), but reconstruct and fold copy the user's in-memory model, so they rebuild
    it from the function itself, with its arguments and name."""
    inputs = keras.Input((6,))
    scaled = keras.layers.Lambda(lambda t, factor: t * factor, arguments={"factor": 2.0}, name="scale")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4, activation="tanh")(scaled)))
    sngd = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 1, "refresh_tolerance": 0.0})
    x = sample_inputs(model, 8)
    assert_outputs_close(sngd(x), model(x))
    assert sngd.get_layer("scale") is not model.get_layer("scale")
    assert sngd.get_layer("scale").arguments == {"factor": 2.0}
    train_at_zero_learning_rate(sngd)
    assert_outputs_close(sngd(x), model(x), rtol=1e-4)
    folded = keras_sngd.fold(sngd)
    assert_outputs_close(folded(x), sngd(x), rtol=1e-4)


def _frozen_backbone_model():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    features = keras.layers.Dense(300, activation="relu", name="dense")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv2d")(image)))
    backbone = keras.Model(image, features, name="backbone")
    backbone.trainable = False
    inputs = keras.Input((8, 8, 3))
    # Called without training=False: only the frozen flag keeps the backbone (and its LocalFishers) still.
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)))


def test_a_frozen_backbone_stays_frozen_and_its_output_stays_fixed_features():
    """`reconstruct` of a model with a frozen nested backbone: the clone is frozen too (before, `clone_model`
    made it trainable and the LocalFishers inserted in it collected statistics and refreshed during `fit`)
    and its frozen layers get no LocalFisher,
    and the head reads fixed features (damping 1, adaptive statistics) also once the backbone's LocalFishers
    have carriers (`keras_sngd.handoff.carrier`: trainable only so that the optimizer writes them; on JAX
    they exist from the build, and the head was then judged to read trained features)."""
    from keras_sngd.graph import reads_fixed_features

    from keras_sngd.reconstruct import FROZEN

    model = _frozen_backbone_model()
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    backbone = sngd.get_layer("backbone")
    # Its layers are frozen: no LocalFisher inside, each skipped with the reason.
    assert not backbone.trainable and not any(isinstance(layer, LocalFisher) for layer in backbone.layers)
    assert sorted(path for path, _, reason in report.skipped if reason == FROZEN) == ["backbone/conv2d", "backbone/dense"]
    head = sngd.get_layer("head_local_fisher")
    assert head.damping == 1.0 and head.adaptive_statistics
    # A backbone whose layers are frozen one by one (the model itself trainable), whose only trainable
    # variable is a carrier (as a LocalFisher's inserted there, on JAX), still outputs fixed features.

    class Carrying(keras.layers.Layer):
        def build(self, input_shape):
            self.probe = keras_sngd.handoff.carrier(self, "probe", ())

        def call(self, inputs):
            return inputs

    image = keras.Input((5,))
    frozen_dense = keras.layers.Dense(4, trainable=False)
    carrying = keras.Model(image, frozen_dense(Carrying()(image)))
    assert [variable.name for variable in carrying.trainable_weights] == ["probe"]
    outer = keras.Input((5,))
    assert reads_fixed_features(carrying(outer))
    sngd.compile(keras.optimizers.SGD(0.01), "mse")
    data = np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32")
    sngd.fit(data, np.zeros((32, 3), "float32"), batch_size=8, epochs=1, verbose=0)
    assert int(head.step.numpy()) == 4
    assert not keras_sngd.fold(sngd).get_layer("backbone").trainable


@keras.saving.register_keras_serializable(package="test_graph_corners")
class DerivedConfig(keras.layers.Layer):
    """A layer whose `get_config` holds a derived value its constructor rejects (as KerasHub's
    `ViTPatchingAndEmbedding` in keras-hub 0.32): `from_config(get_config())` fails."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "twice_the_units": 2 * self.units}


class UnrebuildableConfig(keras.layers.Layer):
    """A layer whose `get_config` leaves out a required argument that it keeps under another name: neither
    its class nor `keras_sngd.config_repair` can rebuild it from its config."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.width = units
        self.dense = keras.layers.Dense(units)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "twice_the_units": 2 * self.width}


@keras.saving.register_keras_serializable(package="test_graph_corners")
class MissingArgument(keras.layers.Layer):
    """A layer whose `get_config` leaves out a required argument it keeps as an attribute of the same name
    (as KerasHub's `Qwen3TransformerDecoder` leaves out `head_dim` in keras-hub 0.32)."""

    def __init__(self, head_dim, **kwargs):
        super().__init__(**kwargs)
        self.head_dim = head_dim

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.head_dim,), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale

    def get_config(self):
        config = super().get_config()
        config.pop("head_dim", None)
        return config


@keras.saving.register_keras_serializable(package="test_graph_corners")
class FailingConfig(keras.layers.Layer):
    """A layer whose `get_config` reads an attribute its constructor never set (as KerasHub's `DeiTEncoder`
    reads `key_dim` in keras-hub 0.32); made with plain arguments, which Keras records."""

    def __init__(self, units, activation="tanh", **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units, activation=activation)

    def call(self, inputs):
        return self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="test_graph_corners")
class RenamedAttribute(keras.layers.Layer):
    """A layer whose `get_config` reads an attribute that was renamed (as KerasHub's Llama decoder block reads
    `rope_scaling_factor` in keras-hub 0.32), made with an initializer object, which Keras does not record;
    every constructor argument is kept as an attribute of the same name (`scale_by` after a transform when
    `double` is set, which a clone made from the attributes would apply twice)."""

    def __init__(self, units, kernel_initializer="glorot_uniform", scale_by=1.0, double=False, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.double = double
        self.scale_by = 2.0 * scale_by if double else scale_by
        self.dense = keras.layers.Dense(units, kernel_initializer=self.kernel_initializer)

    def call(self, inputs):
        return self.dense(inputs) * self.scale_by

    def get_config(self):
        return {**super().get_config(), "units": self.units, "factor": self.renamed_factor}


@keras.saving.register_keras_serializable(package="test_graph_corners")
class ConstructedBackbone(keras.Model):
    """A Functional subclass whose config is its constructor's arguments, as a KerasHub backbone's."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(units, activation="relu", name="inner_dense")(UnrebuildableConfig(units, name="derived")(inputs))
        super().__init__(inputs, outputs, **kwargs)
        self.units = units

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "units": self.units}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_a_nested_model_that_cannot_be_rebuilt_layer_by_layer_is_copied_whole(tmp_path):
    """`keras.models.clone_model` and `load_model` rebuild a KerasHub-style backbone from its own config; so do
    `reconstruct` and `fold` when one of its layers cannot be rebuilt from its config (before, they raised).
    The copy keeps the class, the weights and the layers' trainable flags, and the report names every layer
    with weights inside it."""
    from keras_sngd.graph import LayerCloneError

    keras.utils.set_random_seed(0)
    backbone = ConstructedBackbone(6, name="backbone")
    backbone.get_layer("inner_dense").trainable = False
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype("float32")
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    copy = sngd.get_layer("backbone")
    assert type(copy) is ConstructedBackbone and copy is not backbone
    assert not copy.get_layer("inner_dense").trainable and copy.get_layer("derived").trainable
    assert [path for path, *_ in report.inserted] == ["head"]
    skipped = {path: reason for path, _, reason in report.skipped}
    assert set(skipped) == {"backbone/derived", "backbone/inner_dense"}
    assert all("inside model 'backbone', copied whole" in reason and "twice_the_units" in reason for reason in skipped.values())
    assert_outputs_close(sngd(x), model(x), rtol=0.0)
    sngd.compile(keras.optimizers.SGD(0.1), "mse")
    sngd.fit(x, np.ones((16, 3), "float32"), batch_size=4, epochs=2, verbose=0)
    assert not np.allclose(copy.get_layer("derived").dense.kernel.numpy(), backbone.get_layer("derived").dense.kernel.numpy())
    folded = keras_sngd.fold(sngd)
    assert type(folded.get_layer("backbone")) is ConstructedBackbone
    assert_outputs_close(folded(x), sngd(x), rtol=1e-5)
    sngd.save(tmp_path / "sngd.keras")
    assert_outputs_close(keras.saving.load_model(tmp_path / "sngd.keras")(x), sngd(x), rtol=1e-6)
    # Given on its own, the backbone is copied whole too, with a warning: nothing is inserted.
    with pytest.warns(UserWarning, match="(?s)cannot be rebuilt layer by layer.*copied whole"):
        alone, report = keras_sngd.reconstruct(backbone, return_report=True)
    assert type(alone) is ConstructedBackbone and not report.inserted
    assert {path for path, *_ in report.skipped} == {"derived", "inner_dense"}
    assert_outputs_close(alone(x), backbone(x), rtol=0.0)
    assert type(keras_sngd.fold(alone)) is ConstructedBackbone
    # A plain Functional model holding such a layer cannot be copied from its config either: the error names it.
    plain_inner = keras.Model(inputs, UnrebuildableConfig(3, name="derived")(inputs), name="plain_inner")
    outer_inputs = keras.Input((4,))
    with pytest.raises(LayerCloneError, match="(?s)Cannot clone layer 'derived'.*twice_the_units"):
        keras_sngd.reconstruct(keras.Model(outer_inputs, keras.layers.Dense(2)(plain_inner(outer_inputs))))


@keras.saving.register_keras_serializable(package="test_graph_corners")
class RepairableBackbone(keras.Model):
    """A backbone whose layers' configs do not match their constructors in the three ways
    `keras_sngd.config_repair` repairs: a derived key the constructor rejects, a required argument left out,
    a `get_config` that fails."""

    def __init__(self, units, **kwargs):
        inputs = keras.Input((4,))
        x = DerivedConfig(units, name="derived")(inputs)
        x = MissingArgument(units, name="missing")(x)
        x = FailingConfig(units, activation="relu", name="failing")(x)
        x = RenamedAttribute(units, keras.initializers.Orthogonal(), scale_by=0.5, name="renamed")(x)
        outputs = keras.layers.Dense(units, activation="relu", name="inner_dense")(x)
        super().__init__(inputs, outputs, **kwargs)
        self.units = units

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "units": self.units}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_layers_whose_config_does_not_match_their_constructor_are_repaired(tmp_path):
    """Such layers made `reconstruct` copy their whole backbone with no LocalFisher inside (KerasHub's ViT,
    GPT-NeoX and Qwen3 backbones). Repaired, the backbone is rebuilt layer by layer; the reconstruction and
    its folded model save to `.keras` files that load."""
    from keras_sngd.config_repair import repair_of

    keras.utils.set_random_seed(0)
    backbone = RepairableBackbone(6, name="backbone")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "copied whole" warning
        sngd, report = keras_sngd.reconstruct(model, return_report=True)
    # The composite `derived` is whitened inside (`keras_sngd.InnerWhitening`), around its repaired clone.
    inner = [f"backbone/{name}/" + backbone.get_layer(name).dense.name for name in ("derived", "failing", "renamed")]
    assert [path for path, *_ in report.inserted] == inner + ["backbone/inner_dense", "head"]
    rebuilt = sngd.get_layer("backbone")
    assert type(rebuilt) is not RepairableBackbone  # rebuilt layer by layer, a plain Functional
    derived, missing = rebuilt.get_layer("derived").layer, rebuilt.get_layer("missing")
    assert repair_of(derived)[:2] == (("twice_the_units",), ()) and repair_of(missing)[:2] == ((), ("head_dim",))
    assert "twice_the_units" not in derived.get_config() and missing.get_config()["head_dim"] == 6
    failing = rebuilt.get_layer("failing").layer
    assert repair_of(failing).arguments == {"units": 6, "activation": "relu"}
    assert failing.get_config()["name"] == "failing" and failing.dense.activation is keras.activations.relu
    renamed = rebuilt.get_layer("renamed").layer
    assert repair_of(renamed).arguments["scale_by"] == 0.5 and renamed.scale_by == 0.5
    assert isinstance(renamed.kernel_initializer, keras.initializers.Orthogonal)
    assert repair_of(backbone.get_layer("derived")) is None  # the original layers are left alone
    assert_outputs_close(sngd(x), model(x), rtol=0.0)
    sngd.compile(keras.optimizers.SGD(0.1), "mse")
    sngd.fit(x, np.ones((16, 3), "float32"), batch_size=4, epochs=2, verbose=0)
    assert int(rebuilt.get_layer("inner_dense_local_fisher").step.numpy()) == 8
    folded = keras_sngd.fold(sngd)
    assert_outputs_close(folded(x), sngd(x), rtol=1e-5)
    assert repair_of(folded.get_layer("backbone").get_layer("missing"))[:2] == ((), ("head_dim",))
    sngd.save(tmp_path / "sngd.keras")
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "sngd.keras")
    assert_outputs_close(loaded(x), sngd(x), rtol=1e-6)
    assert_outputs_close(keras.saving.load_model(tmp_path / "folded.keras")(x), sngd(x), rtol=1e-5)
    # The loaded model holds the layers as their classes build them; fold repairs them again.
    assert_outputs_close(keras_sngd.fold(loaded)(x), sngd(x), rtol=1e-5)
    # Read back from the attributes, `double=True` would double `scale_by` again: refused.
    from keras_sngd.config_repair import repaired_clone

    doubling = RenamedAttribute(3, keras.initializers.Orthogonal(), scale_by=0.5, double=True)
    assert doubling._auto_config is None and repaired_clone(doubling, None) is None
    assert repaired_clone(RenamedAttribute(3, keras.initializers.Orthogonal(), scale_by=0.5), None).scale_by == 0.5
    # Made with plain values, Keras recorded the arguments themselves: those rebuild it, `double` or not.
    assert repaired_clone(RenamedAttribute(3, scale_by=0.5, double=True), None).scale_by == 1.0
    # A repair that does not rebuild the same config is refused: the backbone is copied whole, as before.
    assert [path for path, *_ in keras_sngd.reconstruct(
        keras.Model(inputs, ConstructedBackbone(6, name="other")(inputs)), return_report=True)[1].inserted] == []


def test_layers_called_with_keyword_inputs_get_a_local_fisher():
    # `dense(inputs=x)`: the first argument is a keyword one. It was skipped without a word in the report.
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="tanh", name="first")(inputs=inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="second")(hidden))
    sngd, report = keras_sngd.reconstruct(
        model, local_fisher_arguments={"update_every": 1, "refresh_tolerance": 0}, return_report=True
    )
    assert [row[0] for row in report.inserted] == ["first", "second"]
    probe = sample_inputs(model, 8)
    assert_outputs_close(sngd(probe), model(probe))
    train_at_zero_learning_rate(sngd)
    assert all(f.refresh_mode.kind == "function-preserving" for f in sngd.layers if isinstance(f, LocalFisher))
    assert_outputs_close(sngd(probe), model(probe))
    folded = keras_sngd.fold(sngd)
    assert not any(isinstance(layer, LocalFisher) for layer in folded.layers)
    assert_outputs_close(folded(probe), model(probe))
    # A LocalFisher called by keyword is folded too.
    whitened = LocalFisher(name="lf")(inputs=inputs)
    by_hand = keras.Model(inputs, keras.layers.Dense(3)(whitened))
    folded = keras_sngd.fold(by_hand)
    assert not any(isinstance(layer, LocalFisher) for layer in folded.layers)
    assert_outputs_close(folded(probe), by_hand(probe))



@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_the_original_model_is_left_intact_by_training_its_reconstruction(backend):
    from tests.test_backends import run_on_installed

    report = run_on_installed(backend, os.path.join(os.path.dirname(__file__), "scripts", "original_intact_check.py"))
    assert report["backend"] == backend
    assert "original_error" not in report and "reconstruction_error" not in report, report
    assert report["original_change"] == 0.0 and report["reconstruction_change"] == 0.0


def test_a_local_fisher_that_feeds_no_layer_warns():
    """Put last by mistake, a LocalFisher's output is the model's output: its refreshes change it. That is
    said once, with where the layer belongs; a layer used on its own (no graph) stays quiet."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="dense"),
                              LocalFisher(update_every=1, name="last")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    with pytest.warns(UserWarning, match="'last'.*feeds no layer: its output is a model output.*right before"):
        model.train_on_batch(x, np.zeros((8, 4), "float32"))
    assert model.get_layer("last").refresh_mode.kind == "replacing"
    alone = LocalFisher(update_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone(x, training=True)
    assert "no consumer layer in a model graph" in alone.describe()


def test_inputs_keep_their_layer_names_through_reconstruct_and_fold(tmp_path):
    """An unnamed `keras.Input` makes a tensor `keras_tensor...` and a layer `input_layer...`:
    `keras.models.clone_model` names a copy's inputs after the tensor, so the copy's layers (and config)
    would differ from the model's. `reconstruct` and `fold` keep the layer names, for one or several
    inputs, a dict of inputs, a nested model's inputs and a Sequential model's input."""
    nested_input = keras.Input((4,))
    nested = keras.Model(nested_input, keras.layers.Dense(4, name="inner")(nested_input), name="nested")
    first, second = keras.Input((6,)), keras.Input((4,))
    named = keras.Input((3,), name="named")
    hidden = keras.layers.Dense(4, name="dense")(first)
    merged = keras.layers.Concatenate(name="concat")([hidden, nested(second), named])
    model = keras.Model({"a": first, "b": second, "c": named}, keras.layers.Dense(2, name="out")(merged))
    names = [layer.name for layer in model.layers]
    assert any(name.startswith("input_layer") for name in names)
    assert model.inputs[0].name != model.layers[0].name  # the case: tensor and layer named differently

    sngd = keras_sngd.reconstruct(model)
    plain_names = [layer.name for layer in sngd.layers if not isinstance(layer, LocalFisher)]
    assert plain_names == names
    assert sngd.get_config()["input_layers"] == model.get_config()["input_layers"]
    nested_copy = sngd.get_layer("nested")
    assert [layer.name for layer in nested_copy.layers if not isinstance(layer, LocalFisher)] == [
        layer.name for layer in nested.layers
    ]
    inputs = sample_inputs(model, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sngd(inputs)), keras.ops.convert_to_numpy(model(inputs)), rtol=1e-6, atol=1e-6)

    folded = keras_sngd.fold(sngd)
    assert [layer.name for layer in folded.layers] == names
    assert folded.get_config()["input_layers"] == model.get_config()["input_layers"]
    path = os.path.join(tmp_path, "folded.keras")
    folded.save(path)
    assert [layer.name for layer in keras.saving.load_model(path).layers] == names

    sequential = keras.Sequential([keras.Input((5,), name="pixels"), keras.layers.Dense(3, name="d")])
    for copy in (keras_sngd.reconstruct(sequential), keras_sngd.fold(keras_sngd.reconstruct(sequential))):
        assert copy.inputs[0]._keras_history.operation.name == "pixels"


def _sparse(dense):
    """`dense` as the backend's sparse tensor: a `tf.SparseTensor`, or a JAX `BCOO`."""
    if keras.backend.backend() == "jax":
        from jax.experimental import sparse

        return sparse.BCOO.fromdense(dense)
    import tensorflow as tf

    return tf.sparse.from_dense(dense)


@pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                    reason="Keras has sparse tensors on TensorFlow and JAX only (`keras.Input(sparse=True)`)")
def test_sparse_inputs_are_whitened_and_stay_sparse_inputs():
    """A sparse input (`keras.Input(sparse=True)`, bag-of-words features): the LocalFisher reads it densified
    (whether `reconstruct` put it there or the user did), and the reconstruction and the folded model still
    take sparse batches (`clone_model` alone would make their input dense). TensorFlow's `tf.SparseTensor`
    here; JAX's `BCOO` batches by the next test."""
    rng = np.random.default_rng(0)
    dense = ((rng.uniform(size=(64, 30)) < 0.1) * rng.normal(size=(64, 30))).astype("float32")
    batch, targets = _sparse(dense), rng.normal(size=(64, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((30,), sparse=True)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))
    by_hand = keras.Sequential([keras.Input((30,), sparse=True), LocalFisher(update_every=2), keras.layers.Dense(3)])
    for sngd in (keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 2}), by_hand):
        assert sngd.inputs[0].sparse
        before = keras.ops.convert_to_numpy(sngd(dense))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(sngd(batch)), before, rtol=1e-6, atol=1e-6)
        sngd.compile(keras.optimizers.SGD(0.1), "mse")
        sngd.fit(batch, targets, batch_size=16, epochs=2, verbose=0)
        fishers = [layer for layer in sngd.layers if isinstance(layer, LocalFisher)]
        assert all(int(fisher.refresh_count.numpy()) >= 1 for fisher in fishers)
        trained = keras.ops.convert_to_numpy(sngd(batch))
        assert np.isfinite(trained).all() and not np.allclose(trained, before)
        folded = keras_sngd.fold(sngd)
        assert folded.inputs[0].sparse
        np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(batch)), trained, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() == "jax" or importlib.util.find_spec("jax") is None,
                    reason="runs the test above with KERAS_BACKEND=jax: in process already on JAX, or JAX missing")
def test_sparse_inputs_on_jax():
    """The test above in a process of its own on JAX (the suite's own process runs TensorFlow), with `BCOO`
    batches through `fit`, the refreshes and `fold`."""
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    test = f"{os.path.abspath(__file__)}::test_sparse_inputs_are_whitened_and_stay_sparse_inputs"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                            capture_output=True, text=True, env=environment, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and "1 passed" in result.stdout, (result.stdout + result.stderr)[-3000:]


def test_an_optional_input_stays_optional():
    """`keras.Input(optional=True)` may be given None; `clone_model` alone makes the copy's input required."""

    class AddIfGiven(keras.layers.Layer):
        def call(self, x, y=None):
            return x if y is None else x + y

    required, optional = keras.Input((6,)), keras.Input((6,), optional=True)
    hidden = keras.layers.Dense(4)(AddIfGiven()(required, optional))
    model = keras.Model([required, optional], keras.layers.Dense(2)(hidden))
    batch, other = np.ones((3, 6), "float32"), np.full((3, 6), 0.5, "float32")
    sngd = keras_sngd.reconstruct(model)
    folded = keras_sngd.fold(sngd)
    for copy in (sngd, folded):
        for second in (None, other):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(copy([batch, second])), keras.ops.convert_to_numpy(model([batch, second])), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("between", ["Dropout", "GaussianNoise", "SpatialDropout1D", "Identity"])
def test_inference_identity_layers_between_a_local_fisher_and_its_layer_pass_u_through(between, tmp_path):
    """`LocalFisher -> Dropout -> Dense` (by hand): the Dense absorbs `U` behind the dropout, so refreshes
    keep the inference function and `fold` leaves the dropout before a plain Dense; `reconstruct` adds no
    second LocalFisher there. A dropout that feeds no kernel layer still cannot absorb `U`."""
    make = {
        "Dropout": lambda: keras.layers.Dropout(0.3, name="between"),
        "GaussianNoise": lambda: keras.layers.GaussianNoise(0.5, name="between"),
        "SpatialDropout1D": lambda: keras.layers.SpatialDropout1D(0.3, name="between"),
        "Identity": lambda: keras.layers.Identity(name="between"),
    }[between]
    inputs = keras.Input((5, 6))
    whitened = LocalFisher(update_every=1, refresh_tolerance=0, name="lf")(inputs)
    consumer = keras.layers.Conv1D(4, 3, name="conv") if between == "SpatialDropout1D" else keras.layers.Dense(4, name="dense")
    model = keras.Model(inputs, consumer(make()(whitened)))
    consumers = consumers_of(model.get_layer("lf"), model)
    assert [(c.operation.name, c.binding is not None) for c in consumers] == [(consumer.name, True)]

    probe = sample_inputs(model, 8)
    before = keras.ops.convert_to_numpy(model(probe))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "cannot keep the model's function"
        train_at_zero_learning_rate(model, steps=3)
    assert int(model.get_layer("lf").refresh_count.numpy()) >= 2
    assert_outputs_close(model(probe), before)

    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert len([layer for layer in sngd.layers if isinstance(layer, LocalFisher)]) == 1
    assert any("already has LocalFisher 'lf'" in reason for _, _, reason in report.skipped)

    folded = keras_sngd.fold(model)
    assert [type(layer).__name__ for layer in folded.layers[1:]] == [type(make()).__name__, type(consumer).__name__]
    assert_outputs_close(folded(probe), before)
    path = os.path.join(tmp_path, "folded.keras")
    folded.save(path)
    assert_outputs_close(keras.saving.load_model(path)(probe), before)

    # A dropout that only makes a model output: no layer behind it absorbs U, so none does.
    lf = LocalFisher(update_every=1, name="lf2")
    whitened = lf(keras.Input((6,)))
    ends = keras.Model(lf.input, [keras.layers.Dense(6)(whitened), keras.layers.Dropout(0.3)(whitened)])
    assert consumer_bindings(lf, ends).bindings == []
    assert "Dropout has no kernel" in consumer_bindings(lf, ends).reason


class _TupleShapesOnly(keras.layers.Layer):
    """Builds only from a tuple shape (`input_shape[:-1] + (n,)`), as KerasHub's DeepLabV3 pooling layer."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=input_shape[-1:] + (), initializer="ones")
        self.expanded = input_shape[:-1] + (2 * input_shape[-1],)

    def call(self, x):
        return x * self.scale


def test_a_layer_that_builds_only_from_tuple_shapes_loads_in_a_reconstruction_and_a_folded_model(tmp_path):
    """A `.keras` file passes `build` the shapes as JSON lists; inside a rebuilt graph such a layer saves no
    build config and is built by the loaded graph's call (`keras_sngd.graph.builds_on_its_call`)."""
    inputs = keras.Input((6,))
    hidden = _TupleShapesOnly(name="tuple_only")(keras.layers.Dense(5, activation="tanh")(inputs))
    functional = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    sequential = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"),
                                   _TupleShapesOnly(name="tuple_only"), keras.layers.Dense(3)])
    batch = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    custom = {"_TupleShapesOnly": _TupleShapesOnly}
    copies = []
    for kind, model in (("functional", functional), ("sequential", sequential)):
        model.get_layer("tuple_only").scale.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
        sngd = keras_sngd.reconstruct(model)
        copies += [(model, f"{kind} reconstruction", sngd), (model, f"{kind} folded", keras_sngd.fold(sngd))]
    for model, name, copy in copies:
        path = str(tmp_path / f"{name.replace(' ', '_')}.keras")
        copy.save(path)
        loaded = keras.saving.load_model(path, custom_objects=custom)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(batch)), keras.ops.convert_to_numpy(model(batch)),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        # Keras's own layers and this package's keep their build config.
        assert copy.get_layer("tuple_only").get_build_config() is None
        assert all(layer.get_build_config() is not None for layer in copy.layers
                   if layer.name != "tuple_only" and layer.built and not isinstance(layer, keras.layers.InputLayer))
