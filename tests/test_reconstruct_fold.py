"""reconstruct -> same outputs -> save/load -> train with refreshes -> fold -> same outputs, on a corpus."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
from tests.inputs import as_list
from tests.inputs import assert_outputs_close
from tests.inputs import local_fishers
from tests.inputs import sample_inputs
from tests.inputs import train_a_few_steps
from tests.models import CORPUS

import keras_sngd
from keras_sngd import LocalFisher


def folded_config_is_plain(path):
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    return "LocalFisher" not in config and "keras_sngd" not in config and json.loads(config)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_round_trip(name, tmp_path):
    plain = CORPUS[name]()
    probe = sample_inputs(plain)
    expected = plain(probe)
    sngd, report = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2}, return_report=True)
    fishers = local_fishers(sngd)
    assert len(fishers) == len(report.inserted) > 0
    assert type(sngd) is type(plain)
    # Same function at construction (U = I): exactly.
    for a, b in zip(as_list(sngd(probe)), as_list(expected)):
        np.testing.assert_array_equal(a, b)
    # Nothing shared with the original.
    assert not {id(v) for v in plain.weights} & {id(v) for v in sngd.weights}

    path = os.path.join(tmp_path, "sngd.keras")
    sngd.save(path)
    sngd = keras.saving.load_model(path)
    assert len(local_fishers(sngd)) == len(fishers)
    for a, b in zip(as_list(sngd(probe)), as_list(expected)):
        np.testing.assert_array_equal(a, b)

    train_a_few_steps(sngd)
    fishers = local_fishers(sngd)
    assert all(int(f.refresh_count.numpy()) >= 1 and int(f.failed_refresh_count.numpy()) == 0 for f in fishers)
    assert all(f.refresh_mode.kind == "function-preserving" for f in fishers), [f.refresh_mode for f in fishers]
    assert any(not np.allclose(f.inverse_root.numpy(), np.eye(f.inverse_root.shape[0])) for f in fishers)
    trained = sngd(probe)

    folded = keras_sngd.fold(sngd)
    assert not local_fishers(folded) and type(folded) is type(plain)
    assert_outputs_close(folded(probe), trained)
    # The folded model has the original architecture's weights, shape for shape.
    assert [tuple(w.shape) for w in folded.weights] == [tuple(w.shape) for w in plain.weights]
    folded_path = os.path.join(tmp_path, "folded.keras")
    folded.save(folded_path)
    assert folded_config_is_plain(folded_path)
    assert_outputs_close(keras.saving.load_model(folded_path)(probe), trained)
    # The original is untouched.
    for a, b in zip(as_list(plain(probe)), as_list(expected)):
        np.testing.assert_array_equal(a, b)


def test_report_lists_inserted_and_skipped_layers(caplog):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(4, 1, name="separable")(x)
    x = keras.layers.Conv2D(4, 1, groups=2, name="grouped")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    with caplog.at_level("INFO", logger="keras_sngd"):
        sngd, report = keras_sngd.reconstruct(model, exclude=["head"], return_report=True)
    assert [row[0] for row in report.inserted] == ["conv", "hidden"]
    skipped = {path: reason for path, _, reason in report.skipped}
    assert set(skipped) == {"depthwise", "separable", "grouped", "bn", "head"}
    assert "separately" in skipped["depthwise"] and "groups=2" in skipped["grouped"]
    assert skipped["head"] == "excluded by name"
    assert "2 LocalFisher layers inserted, 5 layers skipped" in caplog.text
    assert "+ conv (Conv2D): LocalFisher 'conv_local_fisher', 3 features on axis -1" in str(report)
    probe = sample_inputs(model)
    np.testing.assert_array_equal(np.asarray(sngd(probe)), np.asarray(model(probe)))


def test_options_layer_types_and_per_layer_arguments():
    model = CORPUS["small_cnn"]()
    sngd, report = keras_sngd.reconstruct(
        model,
        layer_types=(keras.layers.Conv2D,),
        local_fisher_arguments={"update_every": 7, "damping": 0.5},
        per_layer_arguments={"conv2d": {"update_every": 3}},
        return_report=True,
    )
    fishers = {f.name: f for f in local_fishers(sngd)}
    assert set(fishers) == {"conv2d_local_fisher", "conv2d_1_local_fisher"}
    assert fishers["conv2d_local_fisher"].update_every == 3 and fishers["conv2d_1_local_fisher"].update_every == 7
    assert all(f.damping == 0.5 for f in fishers.values())
    assert ("dense", "Dense", "type not in layer_types") in report.skipped


def test_reconstructing_twice_inserts_nothing_new():
    once = keras_sngd.reconstruct(CORPUS["small_cnn"]())
    twice, report = keras_sngd.reconstruct(once, return_report=True)
    assert len(local_fishers(twice)) == len(local_fishers(once)) == 3
    skipped = {path: reason for path, _, reason in report.skipped}
    assert not report.inserted and set(skipped) == {"conv2d", "conv2d_1", "dense", "batch_normalization"}
    assert skipped["dense"] == "already has LocalFisher 'dense_local_fisher'"
    hand_made = keras.Sequential(
        [keras.Input((4,)), LocalFisher(), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")]
    )
    again, report = keras_sngd.reconstruct(hand_made, return_report=True)
    assert [row[0] for row in report.inserted] == ["b"] and len(local_fishers(again)) == 2


def test_shared_layer_gets_one_shared_local_fisher():
    model = CORPUS["shared_dense"]()
    sngd = keras_sngd.reconstruct(model)
    shared = [f for f in local_fishers(sngd) if f.name == "shared_local_fisher"]
    assert len(shared) == 1 and len(shared[0]._inbound_nodes) == 2


def test_subclassed_model_gets_a_clear_error():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3)))
    for function in (keras_sngd.reconstruct, keras_sngd.fold):
        with pytest.raises(ValueError, match="subclassed Model.*Functional API.*LocalFisher"):
            function(model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_types": (keras.layers.BatchNormalization,)}, "layer_types"),
        ({"layer_types": ()}, "layer_types"),
        ({"exclude": "dense"}, "exclude"),
        ({"exclude": ["no_such_layer"]}, "no_such_layer"),
        ({"local_fisher_arguments": {"damping": -1.0}}, "damping"),
        ({"local_fisher_arguments": {"axis": 1}}, "axis"),
        ({"per_layer_arguments": {"dense": 3}}, "per_layer_arguments"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_sngd.reconstruct(CORPUS["mlp"](), **kwargs)


def test_layer_that_cannot_be_rebuilt_from_its_config_gets_a_clear_error():
    """A layer whose `get_config` leaves out a required argument of its constructor, kept under another
    name, cannot be cloned, nor repaired (`keras_sngd.config_repair`): the error names it, with the cause
    kept. One whose config only holds a key its constructor refuses (as KerasHub 0.32's
    ViTPatchingAndEmbedding does) is repaired."""

    class Scale(keras.layers.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.stored_factor = factor

        def call(self, inputs):
            return inputs * self.stored_factor

        def get_config(self):
            return {**super().get_config(), "derived": 3}

    class Derived(Scale):
        def get_config(self):
            return {**super().get_config(), "factor": self.stored_factor}

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Scale(2.0, name="scale")(inputs)))
    with pytest.raises(ValueError, match=r"(?s)Cannot clone layer 'scale' \(Scale\).*from_config.*factor") as info:
        keras_sngd.reconstruct(model)
    assert isinstance(info.value.__cause__, TypeError)
    repairable = keras.Model(inputs, keras.layers.Dense(2)(Derived(2.0, name="scale")(inputs)))
    sngd = keras_sngd.reconstruct(repairable)
    assert "derived" not in sngd.get_layer("scale").get_config() and len(local_fishers(sngd)) == 1
    probe = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    np.testing.assert_array_equal(np.asarray(sngd(probe)), np.asarray(repairable(probe)))


def test_layer_with_a_kernel_constraint_is_skipped_unless_named():
    """A kernel constraint is meant for W: on the whitened W' it would be another constraint, which a
    refresh's re-expression can make bind (measured: SGD(0.0) through 3 refreshes moved a MaxNorm(2) Dense
    network's outputs by 33%). Skipped with the reason; naming the layer in per_layer_arguments inserts one."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, kernel_constraint=keras.constraints.MaxNorm(2.0), name="capped")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, bias_constraint=keras.constraints.NonNeg(), name="head")(hidden))
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert [f.name for f in local_fishers(sngd)] == ["head_local_fisher"]
    (skipped,) = report.skipped
    assert skipped[0] == "capped" and "constraint (MaxNorm)" in skipped[2] and "per_layer_arguments" in skipped[2]
    forced = keras_sngd.reconstruct(model, per_layer_arguments={"capped": {}})
    assert sorted(f.name for f in local_fishers(forced)) == ["capped_local_fisher", "head_local_fisher"]


def test_the_constraint_a_local_fisher_installs_is_not_the_user_s():
    from keras_sngd.handoff import HandoffConstraint
    from keras_sngd.handoff import user_constraint

    class Variable:
        constraint = None

    kernel = Variable()
    assert user_constraint(kernel) is None
    kernel.constraint = HandoffConstraint(None, None, previous=None)
    assert user_constraint(kernel) is None
    kernel.constraint = HandoffConstraint(None, None, previous=keras.constraints.NonNeg())
    assert isinstance(user_constraint(kernel), keras.constraints.NonNeg)
    # A trained reconstruction (its kernels carry the installed constraint) reconstructs to the same layers.
    model = keras_sngd.reconstruct(CORPUS["mlp"]())
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(sample_inputs(model, 16), np.zeros((16,) + tuple(model.outputs[0].shape[1:])), verbose=0)
    again, report = keras_sngd.reconstruct(model, return_report=True)
    assert len(local_fishers(again)) == len(local_fishers(model))
    assert all("already has LocalFisher" in reason for _, _, reason in report.skipped)


def test_unbuilt_sequential_gets_a_clear_error():
    with pytest.raises(ValueError, match="keras.Input"):
        keras_sngd.reconstruct(keras.Sequential([keras.layers.Dense(2)]))


def test_fold_keeps_unabsorbable_local_fisher_as_plain_layers():
    inputs = keras.Input((6,))
    whitened = LocalFisher(refresh_tolerance=0, update_every=1, name="lf")(inputs)
    x = keras.layers.Add()([whitened, inputs])  # Add cannot absorb U
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    with pytest.warns(UserWarning, match="cannot keep the model's function"):
        model.train_on_batch(sample_inputs(model, 16), np.zeros((16, 2)))
    folded = keras_sngd.fold(model)
    assert "lf_mixing" in [layer.name for layer in folded.layers]
    probe = sample_inputs(model)
    assert_outputs_close(folded(probe), model(probe))


def test_fold_centered_same_padding_uses_normalization():
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    sngd = keras_sngd.reconstruct(model, local_fisher_arguments={"update_every": 1, "center": True})
    sngd.compile(keras.optimizers.SGD(0.01), "mse")
    sngd.train_on_batch(sample_inputs(sngd, 16), np.zeros((16, 6, 6, 4)))
    folded = keras_sngd.fold(sngd)
    assert [type(layer).__name__ for layer in folded.layers] == ["Normalization", "Conv2D"]
    probe = sample_inputs(sngd)
    assert_outputs_close(folded(probe), sngd(probe))


@pytest.mark.parametrize(
    "shape, consumer",
    [
        ((6,), lambda: keras.layers.Dense(4)),
        ((6, 6, 3), lambda: keras.layers.Conv2D(4, 3)),
        ((5, 3), lambda: keras.layers.GRU(4)),  # reset_after=True: a (2, 3 * units) bias, row 0 absorbs
    ],
)
def test_fold_absorbs_a_centered_local_fisher_into_the_bias(shape, consumer):
    """`b = b' - contract(U K', mu)`: the shift of a centered LocalFisher goes into the consumer's bias."""
    model = keras.Sequential([keras.Input(shape), LocalFisher(center=True, name="lf"), consumer()])
    local_fisher = model.get_layer("lf")
    rng = np.random.default_rng(0)
    dim = shape[-1]
    noise = rng.standard_normal((dim, dim))
    local_fisher.inverse_root.assign((np.eye(dim) + 0.2 * (noise + noise.T)).astype("float32"))
    local_fisher.shift.assign(rng.uniform(0.2, 0.8, dim).astype("float32"))
    folded = keras_sngd.fold(model)
    assert not local_fishers(folded) and len(folded.layers) == 1
    probe = sample_inputs(model)
    assert_outputs_close(folded(probe), model(probe))
