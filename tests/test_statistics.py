import numpy as np
import pytest

from keras_sngd.statistics import accumulate_moments
from keras_sngd.statistics import batch_moments
from keras_sngd.statistics import local_fisher_matrix
from keras_sngd.statistics import update_moving_moments


@pytest.mark.parametrize(
    "shape, axis",
    [((16, 5), -1), ((4, 6, 6, 3), -1), ((4, 3, 6, 6), 1), ((4, 7, 5), -1), ((2, 3, 4, 5, 6), -1)],
)
def test_batch_moments_match_numpy(shape, axis):
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal(shape).astype("float32") + 1.0
    second_moment, mean, _ = batch_moments(inputs, axis)
    rows = np.moveaxis(inputs, axis, -1).reshape(-1, shape[axis]).astype(np.float64)
    np.testing.assert_allclose(np.asarray(second_moment), rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean), rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert second_moment.dtype == "float32"


def test_batch_moments_of_float16_inputs_are_float32():
    second_moment, mean, _ = batch_moments(np.ones((4, 3), "float16"))
    assert second_moment.dtype == "float32" and mean.dtype == "float32"


def test_moving_average_is_bias_corrected():
    rng = np.random.default_rng(0)
    moving_second_moment, moving_mean, weight = np.zeros((3, 3), "float32"), np.zeros(3, "float32"), 0.0
    batches = [rng.standard_normal((8, 3)).astype("float32") for _ in range(5)]
    for batch in batches:
        second_moment, mean, _ = batch_moments(batch)
        moving_second_moment, moving_mean, weight, accepted = update_moving_moments(
            moving_second_moment, moving_mean, weight, second_moment, mean, 0.9
        )
        assert bool(accepted)
    # Bias-corrected EMA = weighted average with weights 0.9^(4 - i), normalized.
    weights = 0.9 ** np.arange(4, -1, -1)
    expected = sum(w * b.T.astype(np.float64) @ b / 8 for w, b in zip(weights, batches)) / weights.sum()
    fisher = local_fisher_matrix(moving_second_moment, moving_mean, weight)
    np.testing.assert_allclose(np.asarray(fisher), expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_batch_leaves_statistics_unchanged(bad):
    moving_second_moment, moving_mean = np.eye(3, dtype="float32"), np.ones(3, "float32")
    batch = np.ones((4, 3), "float32")
    batch[1, 2] = bad
    second_moment, mean, _ = batch_moments(batch)
    new_second_moment, new_mean, weight, accepted = update_moving_moments(
        moving_second_moment, moving_mean, 0.5, second_moment, mean, 0.9
    )
    assert not bool(accepted)
    np.testing.assert_array_equal(np.asarray(new_second_moment), moving_second_moment)
    np.testing.assert_array_equal(np.asarray(new_mean), moving_mean)
    assert float(weight) == 0.5


def _two_step(state, batch, momentum, axis=-1, mask=None):
    moments = batch_moments(batch, axis, mask)
    return update_moving_moments(*state, moments.second_moment, moments.mean, momentum, count=moments.count)


# Both routes: many rows per feature (convolutions, sequences, narrow Dense inputs) and few (wide Dense).
ROUTES = [((16, 5), -1), ((4, 6, 6, 3), -1), ((4, 3, 6, 6), 1), ((4, 7, 5), -1), ((16, 40), -1), ((8, 3, 200), -1)]


def test_both_routes_are_exercised():
    from keras_sngd.statistics import _matrix_major

    assert {_matrix_major(shape, axis) for shape, axis in ROUTES} == {True, False}


@pytest.mark.parametrize("shape, axis", ROUTES)
def test_accumulate_moments_equals_the_two_step_update(shape, axis):
    """The fused per-step form the layers use is the same moving average as batch_moments + update."""
    rng = np.random.default_rng(2)
    dim = shape[axis]
    state = (np.eye(dim, dtype="float32") * 0.3, np.full(dim, 0.2, "float32"), np.float32(0.4))
    for _ in range(3):
        batch = (rng.standard_normal(shape) * 3.0 + 1.0).astype("float32")
        fused = accumulate_moments(*state, batch, 0.9, axis)
        reference = _two_step(state, batch, 0.9, axis)
        assert bool(fused.accepted) and bool(reference.accepted)
        for got, expected in zip(fused[:3], reference[:3]):
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
        state = tuple(np.asarray(value) for value in fused[:3])


@pytest.mark.parametrize("dim", [3, 400])
def test_accumulate_moments_leaves_masked_rows_out(dim):
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((4, 6, dim)).astype("float32")
    mask = rng.random((4, 6)) > 0.4
    batch[~mask] = np.nan  # padding may hold anything
    state = (np.zeros((dim, dim), "float32"), np.zeros(dim, "float32"), np.float32(0.0))
    fused = accumulate_moments(*state, batch, 0.5, -1, mask)
    rows = batch[mask].astype(np.float64)
    assert bool(fused.accepted)
    np.testing.assert_allclose(np.asarray(fused.second_moment), 0.5 * rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fused.mean), 0.5 * rows.mean(axis=0), rtol=1e-5, atol=1e-7)
    empty = accumulate_moments(*state, batch, 0.5, -1, np.zeros((4, 6), bool))
    assert not bool(empty.accepted) and float(empty.weight) == 0.0


@pytest.mark.parametrize("dim", [3, 40])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_accumulate_moments_skips_a_non_finite_batch(bad, dim):
    """NaN, Inf, or values whose products overflow float32: the state stays exactly as it was."""
    state = (np.eye(dim, dtype="float32"), np.ones(dim, "float32"), np.float32(0.5))
    batch = np.ones((4, dim), "float32")
    batch[1, 2] = bad
    fused = accumulate_moments(*state, batch, 0.9)
    assert not bool(fused.accepted)
    np.testing.assert_array_equal(np.asarray(fused.second_moment), state[0])
    np.testing.assert_array_equal(np.asarray(fused.mean), state[1])
    assert float(fused.weight) == 0.5


def test_centered_fisher_is_covariance_times_activation_factor():
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((64, 4)).astype("float32") * 2.0 + 3.0
    second_moment, mean, _ = batch_moments(batch)
    fisher = local_fisher_matrix(second_moment, mean, 1.0, center=True, activation_factor=0.5)
    expected = 0.5 * np.cov(batch.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(np.asarray(fisher), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fisher), np.asarray(fisher).T)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("update_every, taken", [(2, (0, 1, 3, 6)), (1000, tuple(range(7)))])
def test_statistics_every_k_takes_in_steps_1_k_plus_1_and_so_on(compiled, update_every, taken):
    """`statistics_every=3`: every batch until the first refresh (step 2 here), then only those of steps
    4 and 7 (1, k + 1, 2k + 1, ...); without a refresh yet, every batch."""
    import keras

    from keras_sngd import LocalFisher

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((16, 5)) * (index + 1)).astype("float32") for index in range(7)]
    layer = LocalFisher(statistics_every=3, momentum=0.5, update_every=update_every)
    if compiled:
        model = keras.Sequential([keras.Input((5,)), layer, keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=True)
        for batch in batches:
            model.train_on_batch(batch, np.zeros((16, 2), "float32"))
    else:
        for batch in batches:
            layer(batch, training=True)
    moving, weight = np.zeros((5, 5)), 0.0
    for index in taken:
        moving = 0.5 * moving + 0.5 * batches[index].T @ batches[index] / len(batches[index])
        weight = 0.5 * weight + 0.5
    assert int(layer.step.numpy()) == 7
    assert (int(layer.refresh_count.numpy()) > 0) == (update_every == 2)
    np.testing.assert_allclose(float(layer.statistics_weight.numpy()), weight, rtol=1e-6)
    np.testing.assert_allclose(layer.second_moment.numpy(), moving, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, None])
def test_statistics_every_validation(value):
    from keras_sngd import LocalFisher

    with pytest.raises(ValueError, match="statistics_every"):
        LocalFisher(statistics_every=value)


def test_statistics_every_in_config():
    from keras_sngd import FisherStatistics
    from keras_sngd import LocalFisher

    assert LocalFisher.from_config(LocalFisher(statistics_every=4).get_config()).statistics_every == 4
    assert FisherStatistics(statistics_every=2).statistics_every == 2


@pytest.mark.parametrize(
    "shape, period",
    [((None, 784), 4), ((None, 256), 4), ((None, 255), 1), ((None, 80), 1), ((None, 28, 28, 3), 1),
     ((None, 28, 512), 1)],
)
def test_statistics_every_auto_takes_every_fourth_batch_before_wide_dense_inputs_only(shape, period):
    """The default: wide rank-2 inputs (one row per example, a (d, d) product as costly as `x U`) take every
    4th batch; convolutions, sequences and narrow inputs take every batch. The config keeps "auto"."""
    from keras_sngd import LocalFisher

    layer = LocalFisher()
    layer.build(shape)
    assert layer.statistics_every == "auto" and layer._statistics_period == period
    assert LocalFisher.from_config(layer.get_config()).statistics_every == "auto"
    explicit = LocalFisher(statistics_every=2)
    explicit.build(shape)
    assert explicit._statistics_period == 2


@pytest.mark.parametrize("value", ["sometimes", 0, -1, 1.5])
def test_statistics_every_rejects_bad_values(value):
    from keras_sngd import LocalFisher

    with pytest.raises(ValueError, match="statistics_every"):
        LocalFisher(statistics_every=value)


def _replay_adaptive_schedule(steps, update_every, refreshed_at, base=4, factor=16):
    """The steps whose batch the statistics take in, and the period after `steps` steps, by the rule of
    `adaptive_statistics`, given the steps that refreshed."""
    period, taken, refreshes = base, [], 0
    for step in range(1, steps + 1):
        if refreshes == 0 or (step - 1) % period == 0:
            taken.append(step)
        if step in refreshed_at:
            refreshes += 1
            period = base
        elif step % (max(update_every, period) if period > base else update_every) == 0:
            period = min(2 * period, base * factor)  # a check: every update_every steps, or every grown period
    return taken, period


def test_adaptive_statistics_period_grows_while_settled_and_returns_at_a_refresh():
    """`adaptive_statistics=True`: the period doubles after each drift check that finds no drift (up to 16
    times the base, 4 here) and is back at the base after a refresh; the checks come every `update_every`
    steps, or every period once it has grown past the base and is longer. Stationary inputs settle after the first refresh; inputs
    scaled by 10 then drift, refresh, and reset the period. The moments taken in are exactly those of the
    replayed schedule."""
    import keras

    from keras_sngd import LocalFisher

    rng = np.random.default_rng(0)
    dim, update_every, momentum = 256, 2, 0.9
    layer = LocalFisher(update_every=update_every, momentum=momentum, damping=1.0, adaptive_statistics=True)
    layer.build((None, dim))
    assert int(layer.statistics_period.numpy()) == 4
    batches = [rng.standard_normal((256, dim)).astype("float32") for _ in range(70)]
    refreshed_at, periods = [], []
    for step, batch in enumerate(batches, start=1):
        before = int(layer.refresh_count.numpy())
        layer(keras.ops.convert_to_tensor(batch), training=True)
        if int(layer.refresh_count.numpy()) > before:
            refreshed_at.append(step)
        periods.append(int(layer.statistics_period.numpy()))
    taken, period = _replay_adaptive_schedule(len(batches), update_every, refreshed_at)
    assert refreshed_at == [2], refreshed_at  # stationary inputs: the first check's refresh only
    assert int(layer.statistics_period.numpy()) == period == 64
    assert periods[:8] == [4, 4, 4, 8, 8, 8, 8, 16]
    weight = 1.0 - momentum ** len(taken)
    np.testing.assert_allclose(float(layer.statistics_weight.numpy()), weight, rtol=1e-6)
    # A shift of the inputs' scale: drift, a refresh, and the base period again. At the longest period
    # the shift is taken in within 64 steps and seen by the next check, 64 later.
    shifted = [10.0 * rng.standard_normal((256, dim)).astype("float32") for _ in range(125)]
    after = []
    for batch in shifted:
        before = int(layer.refresh_count.numpy())
        layer(keras.ops.convert_to_tensor(batch), training=True)
        after.append((int(layer.refresh_count.numpy()) > before, int(layer.statistics_period.numpy())))
    assert any(refreshed for refreshed, _ in after), "the shifted inputs never refreshed U"
    assert all(period == 4 for refreshed, period in after if refreshed)


def test_adaptive_statistics_with_a_period_of_one_and_in_config():
    """A base period of 1 adapts too (1, 2, 4, ... 16); the argument is validated and kept in the config;
    without it the layer has no period state."""
    import keras

    from keras_sngd import LocalFisher

    layer = LocalFisher(update_every=2, damping=1.0, adaptive_statistics=True)
    layer.build((None, 8))
    batches = np.random.default_rng(1).standard_normal((40, 512, 8)).astype("float32")
    for batch in batches:
        layer(keras.ops.convert_to_tensor(batch), training=True)
    assert int(layer.refresh_count.numpy()) == 1 and int(layer.statistics_period.numpy()) == 16
    assert LocalFisher.from_config(layer.get_config()).adaptive_statistics is True
    plain = LocalFisher()
    plain.build((None, 300))
    assert not plain.adaptive_statistics
    assert not any(variable.path.endswith("statistics_period") for variable in plain.weights)
    with pytest.raises(ValueError, match="adaptive_statistics"):
        LocalFisher(adaptive_statistics="yes")


def test_reconstruct_adapts_the_statistics_of_wide_fixed_features_only():
    """`reconstruct`: the LocalFisher before a Dense layer reading >= 256 fixed features gets
    `adaptive_statistics=True` (and the report says so); hidden layers, narrow inputs, and a user's own
    `statistics_every` do not."""
    import keras

    import keras_sngd

    inputs = keras.Input((300,))
    hidden = keras.layers.Dense(300, activation="relu", name="wide_in")(inputs)
    side = keras.Input((20,))
    merged = keras.layers.Concatenate()([keras.layers.Dense(300, name="wide_hidden")(hidden),
                                         keras.layers.Dense(4, name="narrow_in")(side)])
    model = keras.Model([inputs, side], keras.layers.Dense(2, name="head")(merged))
    sngd, report = keras_sngd.reconstruct(model, return_report=True)
    adaptive = {layer.name: layer.adaptive_statistics for layer in sngd.layers
                if isinstance(layer, keras_sngd.LocalFisher)}
    assert adaptive == {"wide_in_local_fisher": True, "wide_hidden_local_fisher": False,
                        "narrow_in_local_fisher": False, "head_local_fisher": False}
    assert any(name == "wide_in_local_fisher" and "adaptive statistics" in note for name, note in report.notes)
    mine = keras_sngd.reconstruct(model, local_fisher_arguments={"statistics_every": 2})
    assert not any(layer.adaptive_statistics for layer in mine.layers if isinstance(layer, keras_sngd.LocalFisher))


def test_adaptive_statistics_period_survives_save_and_load(tmp_path):
    """The grown period is state: a saved and loaded model keeps it and trains on identically."""
    import keras

    from keras_sngd import LocalFisher

    rng = np.random.default_rng(2)
    inputs = rng.standard_normal((1024, 300)).astype("float32")
    targets = inputs[:, :3] @ rng.standard_normal((3, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((300,)), LocalFisher(update_every=2, damping=1.0, adaptive_statistics=True),
                              keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(inputs, targets, batch_size=64, epochs=2, shuffle=False, verbose=0)
    period = int(model.layers[0].statistics_period.numpy())
    assert period > 4  # grown past the base of statistics_every="auto" before 300 features
    path = str(tmp_path / "adaptive.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].adaptive_statistics and int(loaded.layers[0].statistics_period.numpy()) == period
    for trained in (model, loaded):
        trained.fit(inputs, targets, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
