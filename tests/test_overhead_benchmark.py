"""`benchmarks/overhead.py`: its layer variants are what their rows say, and its time-to-target arithmetic."""

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.overhead import DenseRoot  # noqa: E402
from benchmarks.overhead import EveryBatch  # noqa: E402
from benchmarks.overhead import BatchClock  # noqa: E402
from benchmarks.overhead import time_to_reach  # noqa: E402
from benchmarks.overhead import time_to_reach_batches  # noqa: E402
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


def test_time_to_reach_batches_uses_the_trailing_mean():
    times = [0.1 * (i + 1) for i in range(6)]
    losses = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    # Means of 3: 0.8, 0.6, 0.4, 0.2 ending at batches 3..6.
    assert time_to_reach_batches(times, losses, 0.6, window=3) == pytest.approx(0.4)
    assert time_to_reach_batches(times, losses, 0.85, window=3) == pytest.approx(0.3)
    assert math.isnan(time_to_reach_batches(times, losses, 0.1, window=3))
    assert math.isnan(time_to_reach_batches(times[:2], losses[:2], 2.0, window=3))


def test_batch_clock_recovers_each_batch_loss_from_keras_running_means():
    import keras
    import numpy as np

    class Logged(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: every batch's loss is fixed by its data
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype("float32"), rng.normal(size=(40, 1)).astype("float32")
    clock, logged = BatchClock(), Logged()
    model.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0, callbacks=[clock, logged])
    expected = [float(model.evaluate(x[i:i + 10], y[i:i + 10], verbose=0)) for i in range(0, 40, 10)] * 2
    np.testing.assert_allclose(clock.losses, expected, rtol=1e-4)
    assert len(clock.times) == 8 and all(b > a for a, b in zip(clock.times, clock.times[1:]))
    assert clock.losses != logged.losses  # they are not the running means Keras logs


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
    assert (plain[6], no_refresh[6], full[6]) == (0, 2, 2)
    assert plain[5] == no_refresh[5] == 0 < full[5]  # only the refresh adds branch and loop functions
    assert plain[4] < no_refresh[4] <= full[4]
    assert all(seconds > 0 for seconds in plain[:4] + full[:4])


def _square_plus(x, y):
    return x * x + y


def test_run_fresh_runs_in_a_new_process():
    from benchmarks.fresh_process import run_fresh

    assert run_fresh(_square_plus, 3, y=1) == 10
    assert run_fresh(os.getpid) != os.getpid()


def test_wide_mlp_variants_are_what_their_names_say():
    from benchmarks import wide_mlp

    def dampings(model):
        return [layer.damping for layer in fishers(model)]

    assert dampings(wide_mlp.build(512, 2, "reconstruct")) == [1.0, 0.064, 0.064]
    assert dampings(wide_mlp.build(512, 2, "no-width-rule")) == [1.0, 0.01, 0.01]
    assert [layer.update_every for layer in fishers(wide_mlp.build(512, 2, "no-width-rule-50"))] == [50] * 3
    by_hand = fishers(wide_mlp.build(80, 2, "by-hand-10"))
    assert [(layer.damping, layer.update_every, layer.max_step, layer.leverage_scaling) for layer in by_hand] == [
        (0.01, 10, None, False)] * 3
    assert all(layer.leverage_scaling for layer in fishers(wide_mlp.build(80, 2, "by-hand-10-leverage")))
    with pytest.raises(ValueError, match="Unknown variant"):
        wide_mlp.build(80, 2, "by-hand-10-fast")
    # The rule is back on after a no-width-rule model.
    assert dampings(wide_mlp.build(512, 1, "reconstruct")) == [1.0, 0.064]
    # The references: the same MLP without LocalFisher.
    assert fishers(wide_mlp.build(512, 2, "plain")) == [] and fishers(wide_mlp.build(512, 2, "adam")) == []
    assert all(layer.leverage_scaling for layer in fishers(wide_mlp.build(512, 2, "reconstruct")))


def test_first_fit_parts_switch_off_what_they_say(fashion_mnist_directory):
    # `benchmarks/first_fit_parts.py`: each variant's LocalFishers carry its arguments, and a fit runs.
    import benchmarks.first_fit_parts as parts

    bare = fishers(reconstruct(paper_mlp(input_shape=(784,)), local_fisher_arguments=dict(parts.VARIANTS["bare"])))
    assert all(layer.max_step is None and layer.refresh_tolerance == 0.0 and layer.statistics_every == 1
               and layer.update_every == parts.NEVER for layer in bare)
    first, second, collections = parts.first_fits("bare", fashion_mnist_directory, batches=2)
    assert first > 0.0 and second > 0.0 and 0.0 <= collections < first
    with pytest.raises(SystemExit):
        parts.main(["--variants", "SGD,fast"])
