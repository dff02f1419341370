"""LocalFishers inside composite layers (`keras_sngd.InnerWhitening`): a KerasHub `TransformerEncoder` or
`TransformerDecoder`, a user's block. On every backend (`scripts/inner_whitening_check.py`, in
subprocesses), and the rules in-process."""

import importlib.util
import os

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd.inner_whitening import InnerWhitening
from keras_sngd.inner_whitening import composite_plan
from keras_sngd.inner_whitening import inner_layers
from keras_sngd.inner_whitening import is_composite
from keras_sngd.inner_whitening import standalone_arguments
from tests.scripts.inner_whitening_check import GatedBlock
from tests.scripts.inner_whitening_check import gated_blocks
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "inner_whitening_check.py")
L = keras.layers


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_composite_layers_train_refresh_fold_and_load(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    assert "gated_blocks" in report["models"] and "sequential_blocks" in report["models"]
    for name, result in report["models"].items():
        assert len(result["inner_local_fishers"]) == result["expected"], (name, result)
        assert result["same_at_start"] == 0.0, (name, result)
        # One LocalFisher call per training step, however many inner layers read its tensor.
        assert set(result["steps"]) == {24}, (name, result)
        # Through SGD(0) only the refreshes change weights: each re-expresses the inner kernels.
        assert all(count >= 1 for count in result["refreshes"]), (name, result)
        assert result["relative_change"] < 1e-4, (name, result)
        assert result["losses"][-1] < result["losses"][0], (name, result)
        assert result["fold_error"] < 1e-5 and result["folded_plain"], (name, result)
        assert result["folded_load_error"] < 1e-5, (name, result)
        assert result["load_error"] < 1e-6 and result["loaded_state_equal"], (name, result)


def _gated_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    return keras.Model(inputs, gated_blocks(inputs), name="gated")


def test_plan_groups_inner_layers_by_the_tensor_they_read():
    block = GatedBlock(8, 12)
    x = keras.KerasTensor((None, 5, 8))
    block(x)
    groups, skipped = composite_plan(block, *standalone_arguments((x,), {}))
    names = [[inner_layers(block)[index].name for index in indices] for indices, _, _ in groups]
    assert names == [["gate", "up"], ["down"]]
    assert [shape for _, shape, _ in groups] == [[None, 5, 8], [None, 5, 12]]
    assert [contracted for _, _, contracted in groups] == [1, 1]
    assert skipped == []


def test_an_einsum_contracting_the_last_two_axes_is_whitened_on_them_flattened():
    """An attention's output projection `abcd,cde->abe` reads (batch, time, heads, size): inside a composite
    it gets a LocalFisher on the heads x size features flattened; in the model graph it keeps its kernel."""
    from keras_sngd.binding import binding_for
    from keras_sngd.binding import inner_binding

    projection = L.EinsumDense("abcd,cde->abe", output_shape=(None, 5), bias_axes="e")
    projection.build((None, 3, 2, 4))
    assert binding_for(projection)[0] is None
    binding, _ = inner_binding(projection)
    assert binding.input_axes == (0, 1) and binding.features == 8 and binding.contracted_axes == 2
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)).astype("float32")
    kernel = keras.ops.convert_to_numpy(projection.kernel)
    expected = (mixing @ kernel.reshape(8, 5)).reshape(2, 4, 5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(binding.mix(mixing)), expected, rtol=1e-5, atol=1e-5)
    # Whitening the flattened input and mixing the kernel keep the layer's function: (x M^-1) (M K) = x K.
    inputs = rng.normal(size=(6, 3, 2, 4)).astype("float32")
    before = keras.ops.convert_to_numpy(projection(inputs))
    inverse = np.linalg.inv(mixing)
    projection.kernel.assign(binding.mix(mixing))
    whitened = (inputs.reshape(6, 3, 8) @ inverse).reshape(6, 3, 2, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(projection(whitened)), before, rtol=1e-3, atol=1e-3)


def test_plan_counts_only_the_last_run_of_a_backend_that_runs_the_call_twice(monkeypatch):
    """PyTorch's `compute_output_spec` reruns the call on real tensors where an operation fails on its
    "meta" ones: the first, partial run's calls must not make every inner layer look called twice."""
    import keras.src.backend as backend

    original = backend.compute_output_spec

    def twice(fn, *args, **kwargs):
        original(fn, *args, **kwargs)
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(backend, "compute_output_spec", twice)
    block = GatedBlock(8, 12)
    x = keras.KerasTensor((None, 5, 8))
    block(x)
    groups, skipped = composite_plan(block, *standalone_arguments((x,), {}))
    assert len(groups) == 2 and skipped == []


def test_a_tensor_marked_sparse_by_shape_inference_is_traced_dense():
    x = keras.KerasTensor((None, 5, 8), sparse=True)
    args, _ = standalone_arguments((x, x), {})
    assert args[0] is args[1] and not args[0].sparse


@keras.saving.register_keras_serializable(package="test_inner_whitening")
class TwiceApplied(L.Layer):
    """One Dense applied to two different tensors inside the call: one U cannot whiten both."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4, name="shared_dense")
        self.other = L.Dense(4, name="other")

    def call(self, inputs):
        return self.dense(inputs) + self.dense(keras.ops.tanh(inputs)) + self.other(inputs)


def test_inner_layer_called_twice_is_skipped_with_the_reason():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, TwiceApplied(name="twice")(inputs))
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    assert [entry[2] for entry in report.inserted] == ["twice_other_local_fisher"]
    reasons = {path: reason for path, _, reason in report.skipped}
    assert "called 2 times" in reasons["twice/shared_dense"]
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(model(x), plain(x), atol=1e-6)


def test_report_names_the_inner_local_fishers_and_walk_layers_finds_them():
    model, report = keras_sngd.reconstruct(_gated_model(), return_report=True)
    inserted = {entry[0]: entry[2] for entry in report.inserted}
    assert inserted["block_1/gate+up"] == "block_1_gate_up_local_fisher"
    assert inserted["block_2/down"] == "block_2_down_local_fisher"
    notes = dict(report.notes)
    assert "inside GatedBlock 'block_1'" in notes["block_1_gate_up_local_fisher"]
    wrappers = [layer for layer in model.layers if isinstance(layer, InnerWhitening)]
    assert [wrapper.name for wrapper in wrappers] == ["block_1", "block_2"]
    found = [layer.name for _, layer in keras_sngd.graph.walk_layers(model) if isinstance(layer, keras_sngd.LocalFisher)]
    assert "block_1_gate_up_local_fisher" in found and "block_2_down_local_fisher" in found
    assert "before gate, up" in wrappers[0].describe()


def test_exclude_layer_types_frozen_and_reconstructing_twice():
    plain = _gated_model()
    _, report = keras_sngd.reconstruct(plain, exclude=["block_1", "down"], return_report=True)
    inserted = [entry[0] for entry in report.inserted]
    assert not any(path.startswith("block_1") for path in inserted)
    assert "block_2/gate+up" in inserted and "block_2/down" not in inserted
    assert ("block_1", "GatedBlock", "excluded by name") in report.skipped
    _, report = keras_sngd.reconstruct(plain, layer_types=(L.Conv2D,), return_report=True)
    assert report.inserted == []
    plain.get_layer("block_2").up.trainable = False
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    assert "block_2/gate" in [entry[0] for entry in report.inserted]
    assert any(path == "block_2/up" and "frozen" in reason for path, _, reason in report.skipped)
    again, report = keras_sngd.reconstruct(model, return_report=True)
    assert report.inserted == []
    assert any("already has 2 LocalFishers inside" in reason for _, _, reason in report.skipped)
    x = np.random.default_rng(1).normal(size=(4, 5, 6)).astype("float32")
    np.testing.assert_allclose(again(x), model(x), atol=1e-6)


def test_statistics_layer_class_keeps_composites_whole():
    _, report = keras_sngd.reconstruct(_gated_model(), layer_class=keras_sngd.FisherStatistics, return_report=True)
    assert not any("/" in entry[0] for entry in report.inserted)
    assert any(path == "block_1" and "composite layer" in reason for path, _, reason in report.skipped)


def test_keras_own_layers_are_not_composites():
    assert not is_composite(L.Dense(3))
    assert not is_composite(L.TimeDistributed(L.Dense(3)))
    assert not is_composite(L.RNN(L.SimpleRNNCell(3)))
    assert is_composite(GatedBlock(4, 4))


def test_wrapper_arguments_are_checked():
    block = GatedBlock(8, 12)
    block(keras.KerasTensor((None, 5, 8)))
    with pytest.raises(ValueError, match="fishers"):
        InnerWhitening(block, fishers=[])


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed (a test extra)")
def test_sngd_trains_a_keras_hub_transformer_faster_than_sgd():
    """A KerasHub TransformerEncoder over Fashion-MNIST-like rows (synthetic, deterministic): with its inner
    layers whitened, SGD at the same rate and steps ends lower than plain SGD, and lower than with the
    composite left whole (the behaviour before InnerWhitening)."""
    import keras_hub

    rng = np.random.default_rng(0)
    features = rng.normal(size=(512, 8, 12)).astype("float32") * rng.uniform(0.1, 3.0, size=(1, 1, 12)).astype("float32")
    labels = (features[:, :, :3].sum(axis=(1, 2)) > 0).astype("int32") + 2 * (features[:, 0, 5] > 0)

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 12))
        x = L.Dense(16, name="embed")(inputs)
        x = keras_hub.layers.TransformerEncoder(intermediate_dim=32, num_heads=2, name="encoder")(x)
        return keras.Model(inputs, L.Dense(4, name="logits")(L.GlobalAveragePooling1D()(x)))

    def final_loss(model):
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model.fit(features, labels, batch_size=32, epochs=6, verbose=0, shuffle=False).history["loss"][-1]

    plain = final_loss(build())
    whole = final_loss(keras_sngd.reconstruct(build(), exclude=["encoder"]))
    inside = final_loss(keras_sngd.reconstruct(build()))
    assert np.isfinite(inside)
    assert inside < plain and inside < whole, (inside, whole, plain)


def test_the_trust_region_bounds_the_steps_of_the_inner_layers():
    model = keras_sngd.reconstruct(_gated_model())
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(16, 5, 6)).astype("float32"), rng.integers(0, 3, 16)
    model.compile(keras.optimizers.SGD(100.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    block = model.get_layer("block_1").layer
    inner = [block.gate, block.up, block.down]

    def weights():
        return [np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in (layer.kernel, layer.bias)])
                for layer in inner]

    before = weights()
    model.train_on_batch(features, labels)
    steps = [np.linalg.norm(new - old) / np.linalg.norm(old) for new, old in zip(weights(), before)]
    radius = model.get_layer("block_1").fishers[0].max_step
    assert radius == 0.05 and all(step <= radius * (1 + 1e-4) for step in steps), steps
    assert max(steps) > 0.5 * radius, steps  # SGD at lr 100 takes the whole radius


def test_transformers_get_the_stable_damping():
    """A network with an attention layer, or a composite layer whitened inside, gets STABLE_ARGUMENTS'
    damping (`keras_sngd.layer_defaults.needs_stable_arguments`); a network of Dense layers does not."""
    from keras_sngd.layer_defaults import STABLE_ARGUMENTS
    from keras_sngd.layer_defaults import default_arguments

    inputs = keras.Input((5, 6))
    dense_only = keras.Model(inputs, L.Dense(3)(L.Dense(4)(inputs)))
    attention = keras.Model(inputs, L.MultiHeadAttention(2, 4)(inputs, inputs))
    assert "damping" not in default_arguments(dense_only)
    assert default_arguments(attention)["damping"] == STABLE_ARGUMENTS["damping"] == 0.1
    assert default_arguments(_gated_model())["damping"] == 0.1
    model, report = keras_sngd.reconstruct(_gated_model(), return_report=True)
    fishers = [layer for _, layer in keras_sngd.graph.walk_layers(model) if isinstance(layer, keras_sngd.LocalFisher)]
    inside = [fisher for fisher in fishers if fisher.name.startswith("block_")]
    assert inside and all(fisher.damping == 0.1 for fisher in inside)


@keras.saving.register_keras_serializable(package="test_inner_whitening")
class MaskedBlock(keras.layers.Layer):
    """Called with keyword arguments that mix a tensor and Python values (as KerasHub's T5 layer is:
    `attention_mask=<tensor>, position_bias=None, use_causal_mask=False`); its inner layers auto-named."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Dense(8)
        self.down = keras.layers.Dense(4)

    def call(self, x, weights=None, bias=None, flag=False):
        y = self.down(keras.ops.relu(self.up(x)))
        if flag:
            y = y * keras.ops.expand_dims(weights, -1)
        return x + y


def masked_block_model():
    x, weights = keras.Input((3, 4)), keras.Input((3,))
    return keras.Model([x, weights], MaskedBlock(name="block")(x, weights=weights, bias=None, flag=True))


def test_a_composite_called_with_tensors_and_python_values_as_keywords():
    model = masked_block_model()
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(5, 3, 4)).astype("float32"), rng.uniform(size=(5, 3)).astype("float32")]
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert isinstance(sngd.get_layer("block"), InnerWhitening) and len(report.inserted) == 2
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(sngd(data)), keras.ops.convert_to_numpy(model(data)))
    sngd.compile(keras.optimizers.SGD(0.1), "mse")
    sngd.fit(data, np.zeros((5, 3, 4), "float32"), epochs=2, verbose=0)
    folded = keras_sngd.fold(sngd)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(data)), keras.ops.convert_to_numpy(sngd(data)),
                               rtol=1e-5, atol=1e-6)


def test_inner_layers_keep_the_names_of_the_original_model():
    """A copy of a composite from its config numbers its auto-named inner layers afresh; the report, the
    LocalFishers' names, `exclude` and `per_layer_arguments` use the user's model's names."""
    model = masked_block_model()
    names = [layer.name for layer in inner_layers(model.get_layer("block"))]
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    assert [path for path, *_ in report.inserted] == [f"block/{name}" for name in names]
    assert [layer.name for layer in inner_layers(sngd.get_layer("block").layer)] == names
    excluded, report = keras_sngd.reconstruct(model, exclude=[names[0]], return_report=True)
    assert [path for path, *_ in report.inserted] == [f"block/{names[1]}"]
    assert (f"block/{names[0]}", "Dense", "excluded by name") in report.skipped
    tuned = keras_sngd.reconstruct(model, per_layer_arguments={names[1]: {"damping": 0.7}})
    assert [fisher.damping for fisher in tuned.get_layer("block").fishers][-1] == 0.7


@pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None, reason="keras-hub is not installed (a test extra)")
def test_fold_copies_whole_a_model_whose_nested_model_cannot_be_copied():
    """KerasHub's SegFormer holds its MiT encoder as a plain nested Functional with a layer whose
    `from_config` fails: neither can be rebuilt, but the SegFormer backbone copies whole from its own config.
    `reconstruct` copied it whole; `fold` must too (it raised a TypeError)."""
    import warnings

    import keras_hub

    keras.utils.set_random_seed(0)
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], image_shape=(32, 32, 3),
        hidden_dims=[8, 16])
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(backbone(images))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sngd = keras_sngd.reconstruct(backbone)
    folded = keras_sngd.fold(sngd)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(folded(images)), expected)


@keras.saving.register_keras_serializable(package="test_inner_whitening")
class SeparableBlock(keras.layers.Layer):
    """A depthwise then pointwise convolution, as in EfficientNet's and MobileNet's blocks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.depthwise = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")
        self.pointwise = keras.layers.Conv2D(4, 1, name="pointwise")

    def call(self, x):
        return self.pointwise(self.depthwise(x))


def test_a_depthwise_convolution_inside_a_composite_is_reported():
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, SeparableBlock(name="block")(inputs))
    _, report = keras_sngd.reconstruct(model, return_report=True)
    assert [path for path, *_ in report.inserted] == ["block/pointwise"]
    (path, kind, reason), = [entry for entry in report.skipped if entry[0].startswith("block/")]
    assert (path, kind) == ("block/depthwise", "DepthwiseConv2D") and "each input channel separately" in reason


class BiasFreeBlock(L.Layer):
    """A block whose first projection has no bias (it cannot absorb a centering shift) and whose second
    has one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = L.Dense(7, use_bias=False, name="first")
        self.second = L.Dense(4, name="second")

    def call(self, inputs):
        return self.second(keras.ops.tanh(self.first(inputs)))


def test_center_inside_a_composite_only_where_the_inner_layer_absorbs_the_shift():
    """`center=True` for every LocalFisher: inside a composite layer there is no graph to put a shift
    back into, so a LocalFisher before an inner layer that cannot absorb it (no bias; an attention's
    projections) is not centered, and the report says so. Before, the refresh failed inside its
    conditional (TensorFlow: "Inconsistent number of source and destination" for a KerasHub
    TransformerEncoder; `None.assign` for a layer without bias)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    plain = keras.Model(inputs, L.Dense(2, name="logits")(L.GlobalAveragePooling1D()(BiasFreeBlock(name="block")(inputs))))
    sngd, report = keras_sngd.reconstruct(plain, return_report=True,
                                          local_fisher_arguments={"update_every": 2, "center": True})
    wrapper = sngd.get_layer("block")
    assert isinstance(wrapper, InnerWhitening)
    centered = {fisher.name: fisher.center for fisher in wrapper.fishers}
    assert centered == {"block_first_local_fisher": False, "block_second_local_fisher": True}, centered
    notes = dict(report.notes)
    assert "not centered (no bias to absorb the shift)" in notes["block_first_local_fisher"]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 5, 6)) + 1.0).astype("float32")
    y = rng.standard_normal((64, 2)).astype("float32")
    before = np.asarray(sngd(x[:8]))
    sngd.compile(keras.optimizers.SGD(0.0), "mse")
    sngd.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(int(fisher.refresh_count.numpy()) >= 1 for fisher in wrapper.fishers)
    assert np.abs(wrapper.fishers[1].shift.numpy()).max() > 0.01  # the second one centers
    after = np.asarray(sngd(x[:8]))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    np.testing.assert_allclose(np.asarray(keras_sngd.fold(sngd)(x[:8])), after, rtol=1e-4,
                               atol=1e-4 * np.abs(after).max())
