"""`benchmarks/overhead.py`: its layer variants are what their rows say, and its time-to-target arithmetic."""

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.overhead import DenseRoot  # noqa: E402
from benchmarks.overhead import EveryBatch  # noqa: E402
from benchmarks.overhead import time_to_reach  # noqa: E402
from keras_sngd import LocalFisher  # noqa: E402
from keras_sngd import reconstruct  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402


def fishers(model):
    return [layer for layer in model.layers if isinstance(layer, LocalFisher)]


def test_variants_override_what_reconstruct_passes():
    # `reconstruct` passes rank="auto": the dense row must still get a dense U everywhere.
    defaults = fishers(reconstruct(paper_mlp(input_shape=(28, 28))))
    assert [layer.rank for layer in defaults] == ["auto", "auto", "auto"]
    dense = fishers(reconstruct(paper_mlp(input_shape=(28, 28)), layer_class=DenseRoot))
    assert [layer.rank for layer in dense] == [None, None, None]
    every = fishers(reconstruct(paper_mlp(input_shape=(28, 28)), layer_class=EveryBatch))
    assert [layer.statistics_every for layer in every] == [1, 1, 1]


def test_time_to_reach_interpolates_between_epoch_ends():
    ends, losses = [2.0, 3.0, 4.0], [0.6, 0.3, 0.2]
    assert time_to_reach(losses, ends, 0.45) == pytest.approx(2.5)
    assert time_to_reach(losses, ends, 0.6) == pytest.approx(2.0)
    assert time_to_reach(losses, ends, 0.7) == pytest.approx(2.0)  # reached by the first epoch's end
    assert math.isnan(time_to_reach(losses, ends, 0.1))


def test_compile_cost_counts_what_the_refresh_adds(monkeypatch):
    import keras

    from benchmarks import compile_cost

    def tiny():
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3, strides=4)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    monkeypatch.setattr(compile_cost, "mobilenet_v2", tiny)
    plain, no_refresh, full = (compile_cost.measure(kind) for kind in ["plain", "no refresh", "LocalFisher"])
    assert (plain[5], no_refresh[5], full[5]) == (0, 2, 2)
    assert plain[4] == no_refresh[4] == 0 < full[4]  # only the refresh adds branch and loop functions
    assert plain[3] < no_refresh[3] <= full[3]
    assert all(seconds > 0 for seconds in plain[:3] + full[:3])
