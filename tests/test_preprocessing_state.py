"""`reconstruct` and `fold` keep the state of preprocessing layers that is not variables.

`set_weights` copies variables only; an adapted `Normalization` derives its mean and variance from its
variables when loaded, `Discretization` keeps its bin boundaries outside variables, and lookup layers
keep their vocabulary in a table. The copies must compute what the original computes
(`keras_sngd.graph.restore_derived_state`).
"""

import keras
import numpy as np
import pytest

import keras_sngd

RNG = np.random.default_rng(0)


def _numeric():
    features = (3.0 + 2.0 * RNG.normal(size=(256, 6))).astype("float32")
    normalization = keras.layers.Normalization()
    normalization.adapt(features)
    discretization = keras.layers.Discretization(num_bins=4, output_mode="one_hot")
    discretization.adapt(features[:, :1])
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(normalization(inputs))
    bins = discretization(keras.layers.Lambda(lambda x: x[:, :1])(inputs))
    outputs = keras.layers.Dense(3)(keras.layers.Concatenate()([hidden, bins]))
    return keras.Model(inputs, outputs), features


def _text():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("string inputs (StringLookup, TextVectorization) need the TensorFlow backend")
    words = np.array([["red"], ["green"], ["blue"], ["red"], ["teal"], ["green"]] * 16)
    lookup = keras.layers.StringLookup(output_mode="one_hot")
    lookup.adapt(words)
    sentences = np.array(["a red fox", "the green frog", "a blue bird", "red red sky"] * 24)
    vectorize = keras.layers.TextVectorization(output_mode="multi_hot")
    vectorize.adapt(sentences)
    word, sentence = keras.Input((1,), dtype="string"), keras.Input((), dtype="string")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(lookup(word)), vectorize(sentence)])
    import tensorflow as tf  # string tensors: Keras does not take NumPy string arrays

    return keras.Model([word, sentence], keras.layers.Dense(2)(joined)), [tf.constant(words), tf.constant(sentences[: len(words)])]


@pytest.mark.parametrize("build", [_numeric, _text], ids=["normalization_discretization", "lookups"])
def test_reconstruct_and_fold_keep_preprocessing_state(build):
    keras.utils.set_random_seed(0)
    model, data = build()
    reference = keras.ops.convert_to_numpy(model.predict(data, verbose=0))
    reconstructed = keras_sngd.reconstruct(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reconstructed.predict(data, verbose=0)), reference,
                               rtol=1e-5, atol=1e-5)
    labels = RNG.integers(0, 2, len(reference))
    reconstructed.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reconstructed.fit(data, labels, batch_size=16, epochs=1, verbose=0)
    trained = keras.ops.convert_to_numpy(reconstructed.predict(data, verbose=0))
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, reference)
    folded = keras_sngd.fold(reconstructed)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded.predict(data, verbose=0)), trained,
                               rtol=1e-4, atol=1e-4)


@keras.saving.register_keras_serializable(package="test_preprocessing_state")
class _Offset(keras.layers.Layer):
    """A user layer with state outside variables, saved and loaded its own way."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.offset = np.zeros((1,), "float32")

    def call(self, inputs):
        return inputs + self.offset

    def save_own_variables(self, store):
        store["offset"] = self.offset

    def load_own_variables(self, store):
        self.offset = np.array(store["offset"])


def test_a_user_layer_that_saves_its_own_way_is_copied_its_own_way():
    offset = _Offset()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(offset(inputs)))
    offset.offset = np.full((4,), 5.0, "float32")
    data = RNG.normal(size=(8, 4)).astype("float32")
    reference = keras.ops.convert_to_numpy(model(data))
    reconstructed = keras_sngd.reconstruct(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reconstructed(data)), reference, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras_sngd.fold(reconstructed)(data)), reference,
                               rtol=1e-5, atol=1e-6)
