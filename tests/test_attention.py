"""`reconstruct` whitens the query, key and value of `MultiHeadAttention` and `GroupQueryAttention` layers,
one LocalFisher per distinct tensor, on every backend (`scripts/attention_check.py`, in subprocesses)."""

import os

import keras
import numpy as np
import pytest

import keras_sngd
from keras_sngd.binding import bindings_for
from keras_sngd.consumers import consumer_bindings
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "attention_check.py")
L = keras.layers


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_attention_layers_train_refresh_and_fold(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend
    for name, result in report["models"].items():
        # One LocalFisher per distinct tensor among query, key and value.
        assert len(result["attention_local_fishers"]) == result["expected"], (name, result)
        assert result["skipped"] == [], (name, result)
        assert result["same_at_start"] == 0.0, (name, result)
        # Through SGD(0) only the refreshes change weights: every projection reading a whitened tensor is
        # re-expressed (re-expressing the query alone would move the outputs).
        assert all(count >= 1 for count in result["refreshes"]), (name, result)
        assert result["relative_change"] < 1e-4, (name, result)
        assert result["losses"][-1] < result["losses"][0], (name, result)
        assert result["fold_error"] < 1e-4 and not result["folded_has_local_fisher"], (name, result)
        assert result["load_error"] < 1e-5, (name, result)


def test_bindings_of_attention():
    attention = L.MultiHeadAttention(2, 4)
    attention(np.zeros((1, 3, 6), "float32"), np.zeros((1, 5, 7), "float32"))
    query, key, value = bindings_for(attention)[0]
    assert [b.part for b in (query, key, value)] == [0, 1, 2]
    assert [b.name for b in (query, key, value)] == [f"{attention.name}_{label}" for label in ("query", "key", "value")]
    assert query.kernel is attention._query_dense.kernel and query.features == 6
    assert key.kernel is attention._key_dense.kernel and key.features == 7
    assert value.kernel is attention._value_dense.kernel and value.features == 7
    # The output projection reads the attention's result, made inside the call: not bound.
    assert all(b.kernel is not attention._output_dense.kernel for b in (query, key, value))


def test_the_report_says_the_output_projection_gets_no_local_fisher():
    inputs = keras.Input((5, 6))
    outputs = L.Dense(3)(L.Flatten()(L.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)))
    _, report = keras_sngd.reconstruct(keras.Model(inputs, outputs), return_report=True)
    notes = [note for name, note in report.notes if name.startswith("attention")]
    assert any("output projection 'attention_output'" in note and "no LocalFisher" in note for note in notes), notes
    assert "output projection 'attention_output'" in str(report)




def test_hand_inserted_local_fisher_before_self_attention_is_absorbed():
    inputs = keras.Input((5, 6))
    local_fisher = keras_sngd.LocalFisher(name="by_hand")
    whitened = local_fisher(inputs)
    attention = L.MultiHeadAttention(2, 4, name="attention")
    outputs = L.Dense(3)(L.Flatten()(attention(whitened, whitened)))
    model = keras.Model(inputs, outputs)
    bindings, reason = consumer_bindings(local_fisher, model)
    assert reason is None
    assert sorted(b.name for b in bindings) == ["attention_key", "attention_query", "attention_value"]


def test_whitened_tensor_used_as_a_mask_is_not_absorbed():
    # The LocalFisher's output is also the attention mask's source... here, passed as the mask itself:
    # no kernel mixes that argument, so U cannot be absorbed there, and none of the consumers absorbs it.
    inputs = keras.Input((5, 5))
    local_fisher = keras_sngd.LocalFisher(name="by_hand")
    whitened = local_fisher(inputs)
    other = L.Dense(5)(inputs)
    attention = L.MultiHeadAttention(1, 4, name="attention")
    outputs = attention(other, other, attention_mask=whitened)
    model = keras.Model(inputs, outputs)
    bindings, reason = consumer_bindings(local_fisher, model)
    assert bindings == [] and "not as the input its kernel mixes" in reason


def test_reconstruct_report_names_attention_groups_and_respects_exclude():
    inputs = keras.Input((5, 6))
    query = L.Dense(8, name="query_features")(inputs)
    outputs = L.MultiHeadAttention(2, 4, name="attention")(query, inputs)
    model = keras.Model(inputs, outputs)
    _, report = keras_sngd.reconstruct(model, return_report=True)
    inserted = {entry[2]: entry[0] for entry in report.inserted}
    assert inserted["attention_query_local_fisher"] == "attention (query)"
    assert inserted["attention_key_value_local_fisher"] == "attention (key/value)"
    _, report = keras_sngd.reconstruct(model, exclude=["attention"], return_report=True)
    assert [entry[2] for entry in report.inserted] == ["query_features_local_fisher"]
    assert {entry[0] for entry in report.skipped} == {"attention (query)", "attention (key/value)"}


@keras.saving.register_keras_serializable(package="test_attention")
class _NormalizedQueryAttention(L.MultiHeadAttention):
    """Transforms the query before projecting it: whitening the query argument would not mix the
    projection's input."""

    def call(self, query, value, key=None, **kwargs):
        return super().call(keras.ops.tanh(query), value, key, **kwargs)


def test_attention_subclass_with_its_own_call_is_whitened_inside():
    """Its projections cannot be bound to the call's arguments (the call transforms the query first), so the
    layer is whitened inside its call (`keras_sngd.InnerWhitening`), where the tensors each projection reads
    are seen: the transformed query gets a LocalFisher of its own, the key and value share one, and the
    output projection (contracting heads and their size) gets one on the two axes flattened."""
    inputs = keras.Input((5, 6))
    outputs = _NormalizedQueryAttention(2, 4, name="attention")(inputs, inputs)
    plain = keras.Model(inputs, outputs)
    assert "overrides the call of MultiHeadAttention" in bindings_for(plain.get_layer("attention"))[1]
    sngd, report = keras_sngd.reconstruct(plain, return_report=True)
    assert sorted(row[0] for row in report.inserted) == ["attention/attention_output", "attention/key+value",
                                                         "attention/query"]
    assert isinstance(sngd.get_layer("attention"), keras_sngd.InnerWhitening)
    probe = np.random.default_rng(0).normal(size=(3, 5, 6)).astype("float32")
    np.testing.assert_allclose(sngd(probe), plain(probe), atol=1e-6)
