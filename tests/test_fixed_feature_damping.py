"""`reconstruct` damps the LocalFishers that read fixed features (`keras_sngd.layer_defaults.fixed_feature_damping`)."""

import keras
import pytest
from tests.inputs import local_fishers

import keras_sngd
from keras_sngd.graph import reads_fixed_features
from keras_sngd.layer_defaults import FIXED_FEATURE_DAMPING
from keras_sngd.layer_defaults import fixed_feature_damping
from keras_sngd.models import lstm_rows
from keras_sngd.models import paper_mlp
from keras_sngd.models import small_cnn


def dampings(model, **kwargs):
    return {layer.name: layer.damping for layer in local_fishers(keras_sngd.reconstruct(model, **kwargs))}


def test_the_rule():
    dense = keras.layers.Dense(3)
    assert FIXED_FEATURE_DAMPING == 1.0
    assert fixed_feature_damping(dense, 0.01, 784) == 1.0 and fixed_feature_damping(dense, 3.0, 784) == 3.0
    assert fixed_feature_damping(keras.layers.EinsumDense("ab,bc->ac", output_shape=3), 0.1, 8) == 1.0
    assert fixed_feature_damping(dense, 0.1, 1) == 0.1  # one feature: nothing to erase, only a rescaled step
    # Recurrent layers and convolutions keep the network's damping (measured on an LSTM; see the docstring).
    assert fixed_feature_damping(keras.layers.LSTM(4), 0.1, 28) == 0.1
    assert fixed_feature_damping(keras.layers.Conv2D(4, 3), 0.1, 3) == 0.1


def test_only_the_layer_on_the_raw_input_of_the_mlp_is_damped_and_the_report_says_why():
    sngd, report = keras_sngd.reconstruct(paper_mlp(), return_report=True)
    assert {layer.name: layer.damping for layer in local_fishers(sngd)} == {
        "dense_1_local_fisher": 1.0, "dense_2_local_fisher": 0.01, "logits_local_fisher": 0.01}
    assert report.notes == [
        ("dense_1_local_fisher", "damping 1: its input is fixed features (no trained layer before it)"),
        ("dense_1_local_fisher", "adaptive statistics: taken in less often while U still whitens them (fixed "
                                 "features depend on the data alone)"),
        # With damping 1 on 784 features, `rank="auto"` keeps a low-rank U there (keras_sngd.low_rank).
        ("dense_1_local_fisher", "U of rank 64 plus identity (rank='auto'; keras_sngd.low_rank)"),
    ]
    assert "784 features on axis -1; damping 1: its input is fixed features" in str(report)


def test_a_damping_the_user_gives_is_kept():
    assert set(dampings(paper_mlp(), local_fisher_arguments={"damping": 0.2}).values()) == {0.2}
    assert dampings(paper_mlp(), per_layer_arguments={"dense_1": {"damping": 0.05}})["dense_1_local_fisher"] == 0.05


def test_convolutional_and_recurrent_networks_keep_their_damping():
    assert set(dampings(small_cnn()).values()) == {0.1}
    assert set(dampings(lstm_rows()).values()) == {0.1}
    # A Dense layer on the raw input of a network with convolutions elsewhere is damped all the same.
    inputs = keras.Input((8, 8, 3))
    image = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    side = keras.layers.Dense(4, name="side")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Concatenate()([image, side])))
    assert dampings(model) == {"conv_local_fisher": 0.1, "side_local_fisher": 1.0, "head_local_fisher": 0.1}


def test_what_counts_as_fixed_features():
    inputs = keras.Input((12,))
    scaled = keras.layers.Rescaling(0.5)(inputs)
    scaled = keras.ops.concatenate([scaled, keras.layers.Dropout(0.1)(inputs)], axis=-1)  # a raw operation
    frozen = keras.layers.Dense(8, trainable=False, name="frozen")(scaled)
    after_frozen = keras.layers.Dense(6, name="after_frozen")(frozen)
    normalized = keras.layers.BatchNormalization(name="bn")(scaled)  # trainable gamma and beta
    after_bn = keras.layers.Dense(6, name="after_bn")(normalized)
    trained = keras.layers.Dense(6, name="trained")(scaled)
    after_trained = keras.layers.Dense(6, name="after_trained")(trained)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([after_frozen, after_bn, after_trained]))
    model = keras.Model(inputs, outputs)
    assert reads_fixed_features(scaled) and reads_fixed_features(frozen)
    assert not reads_fixed_features(normalized) and not reads_fixed_features(trained)
    assert not reads_fixed_features(inputs, inputs_are_fixed=False)
    got = dampings(model)
    assert "frozen_local_fisher" not in got  # a frozen layer gets no LocalFisher
    assert got["trained_local_fisher"] == got["after_frozen_local_fisher"] == 1.0
    assert got["after_bn_local_fisher"] == got["after_trained_local_fisher"] == got["out_local_fisher"] == 0.01


@pytest.mark.parametrize("feed_raw", [True, False])
def test_nested_models_know_what_they_are_called_on(feed_raw):
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="inner_dense")], name="inner")
    inputs = keras.Input((5,))
    features = inputs if feed_raw else keras.layers.Dense(5, name="outer_dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(features)))
    got = dampings(model)
    assert got["inner_dense_local_fisher"] == (1.0 if feed_raw else 0.01)
    # Nested in a Sequential after a trained layer, and as the first layer of one.
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="inner_dense")], name="inner")
    layers = [keras.Input((5,))] + ([] if feed_raw else [keras.layers.Dense(5, name="outer_dense")]) + [inner]
    got = dampings(keras.Sequential(layers))
    assert got["inner_dense_local_fisher"] == (1.0 if feed_raw else 0.01)


def test_ngd_statistics_follow_the_same_rule():
    from keras_sngd import FisherStatistics
    from keras_sngd.graph import walk_layers

    model = keras_sngd.reconstruct(paper_mlp(), layer_class=FisherStatistics)
    statistics = [layer for _, layer in walk_layers(model) if isinstance(layer, FisherStatistics)]
    assert [layer.damping for layer in statistics] == [1.0, 0.01, 0.01]
