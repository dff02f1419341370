"""The low-rank-plus-identity `U` (`keras_sngd.low_rank`, `LocalFisher(rank=...)`): numerics against float64
`eigh`, the `"auto"` rule, the guards, and training, fold and save/load on every backend."""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_sngd
from keras_sngd.low_rank import dense_root
from keras_sngd.low_rank import LowRankRoot
from keras_sngd.low_rank import initial_basis
from keras_sngd.low_rank import low_rank_mixing
from keras_sngd.low_rank import low_rank_refresh
from keras_sngd.low_rank import resolve_rank
from keras_sngd.models import paper_mlp
from tests.reference import damped
from tests.test_backends import run_on_installed

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "low_rank_check.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spiked(dim, spikes, floor, seed=0):
    """A symmetric matrix with eigenvalues `spikes` and `floor` (float64 of float32 values), and its basis."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eigenvalues = np.concatenate([spikes, floor])
    matrix = (basis * eigenvalues) @ basis.T
    return (0.5 * (matrix + matrix.T)).astype(np.float32).astype(np.float64)


def refresh(fisher, old, rank, damping, basis=None):
    dim = fisher.shape[0]
    basis = initial_basis(dim, rank) if basis is None else basis
    accepted, inverse_root, mixing, root = low_rank_refresh(
        np.asarray(fisher, "float32"), np.asarray(old, "float32"), basis, damping
    )
    return bool(np.asarray(accepted)), np.asarray(inverse_root, "float64"), np.asarray(mixing, "float64"), root


@pytest.mark.parametrize("spread", [1e2, 1e4])
def test_exact_for_spikes_over_a_flat_floor(spread):
    # G_d = spikes + flat floor is exactly of the kept form: U U^T = G_d^-1 to float32 rounding, which
    # costs the directions of the smaller spikes about eps32 times the spread of the spikes.
    dim, rank = 96, 8
    fisher = spiked(dim, np.logspace(np.log10(spread), 1.0, rank), np.full(dim - rank, 1.0))
    accepted, inverse_root, _, _ = refresh(fisher, np.eye(dim), rank, damping=0.0)
    assert accepted
    expected = np.linalg.inv(fisher)
    assert np.linalg.norm(inverse_root @ inverse_root.T - expected) / np.linalg.norm(expected) < max(1e-5, 1e-8 * spread)


def test_whitening_error_is_bounded_by_the_damping():
    # A decaying spectrum: 8 eigenvalues above the mean, then a power law. With damping 1 every other
    # eigenvalue of G_d is within [mu, 2 mu]: U^T G_d U has its eigenvalues within a factor 2 of 1.
    dim, rank = 128, 16
    eigenvalues = 50.0 * np.arange(1, dim + 1, dtype=np.float64) ** -1.5
    fisher = spiked(dim, eigenvalues[:rank], eigenvalues[rank:])
    accepted, inverse_root, _, _ = refresh(fisher, np.eye(dim), rank, damping=1.0)
    assert accepted
    whitened = np.linalg.eigvalsh(inverse_root.T @ damped(fisher, 1.0) @ inverse_root)
    assert 0.5 <= whitened.min() and whitened.max() <= 2.0
    # The top directions get G_d^-1 exactly (the subspace iteration found them): U U^T v = v / lambda.
    values, vectors = np.linalg.eigh(damped(fisher, 1.0))
    top, top_values = vectors[:, -4:], values[-4:]
    np.testing.assert_allclose(inverse_root @ inverse_root.T @ top, top / top_values, atol=1e-3 / top_values.min())


def test_mixing_keeps_the_effective_weights():
    # U_new M = U_old for any U_old: the consumer's function is kept exactly.
    dim, rank = 80, 10
    rng = np.random.default_rng(3)
    old = np.eye(dim) + 0.1 * rng.standard_normal((dim, dim))
    fisher = spiked(dim, np.linspace(40.0, 5.0, rank), np.linspace(1.0, 0.5, dim - rank))
    accepted, inverse_root, mixing, _ = refresh(fisher, old, rank, damping=0.5)
    assert accepted
    assert np.abs(inverse_root @ mixing - old).max() < 1e-4


def test_factored_mixing_matches_the_dense_mixing():
    # `low_rank_mixing(new, old, K)` = `M K` with the refresh's dense `M = U_new^-1 U_old`: from the start
    # (U_old = I, whose factors hold the random initial basis with zero scales) and from a previous refresh.
    dim, rank = 96, 8
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((dim, 7)).astype("float32")
    fisher = spiked(dim, np.linspace(200.0, 20.0, rank), np.linspace(1.0, 0.1, dim - rank))
    start = LowRankRoot(initial_basis(dim, rank), np.zeros(rank, "float32"), np.float32(1.0))
    _, first, mixing, root = refresh(fisher, np.eye(dim), rank, damping=1.0)
    factored = np.asarray(low_rank_mixing(root, start, kernel), "float64")
    np.testing.assert_allclose(factored, mixing @ kernel, atol=1e-5 * np.abs(mixing @ kernel).max())
    moved = fisher * 1.3 + 0.2 * np.eye(dim)
    accepted, second, mixing, new_root = refresh(moved, first, rank, damping=1.0, basis=np.asarray(root.basis))
    assert accepted
    factored = np.asarray(low_rank_mixing(new_root, root, kernel), "float64")
    np.testing.assert_allclose(factored, mixing @ kernel, atol=1e-5 * np.abs(mixing @ kernel).max())
    # And it keeps the function: U_new (M K) = U_old K.
    np.testing.assert_allclose(second @ factored, first @ kernel, atol=1e-4 * np.abs(first @ kernel).max())


def test_warm_start_converges_on_the_top_directions():
    # A second refresh from the first one's basis, on slightly moved statistics: the same quality.
    dim, rank = 96, 8
    fisher = spiked(dim, np.linspace(200.0, 20.0, rank), np.linspace(1.0, 0.1, dim - rank))
    _, first, _, root = refresh(fisher, np.eye(dim), rank, damping=1.0)
    moved = fisher * 1.05 + 0.01 * np.eye(dim)
    accepted, second, _, _ = refresh(moved, first, rank, damping=1.0, basis=np.asarray(root.basis))
    assert accepted
    whitened = np.linalg.eigvalsh(second.T @ damped(moved, 1.0) @ second)
    assert 0.5 <= whitened.min() and whitened.max() <= 2.0


def test_factors_match_the_dense_root():
    dim, rank = 64, 8
    fisher = spiked(dim, np.linspace(30.0, 3.0, rank), np.full(dim - rank, 0.5))
    _, inverse_root, _, root = refresh(fisher, np.eye(dim), rank, damping=0.1)
    assert np.abs(np.asarray(dense_root(root, dim)) - inverse_root).max() < 1e-6
    basis = np.asarray(root.basis, "float64")
    assert np.abs(basis.T @ basis - np.eye(rank)).max() < 1e-5


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_statistics_are_rejected(bad):
    dim, rank = 64, 8
    fisher = spiked(dim, np.linspace(30.0, 3.0, rank), np.full(dim - rank, 0.5))
    fisher[3, 5] = bad
    old = np.eye(dim, dtype="float32") * 0.7
    accepted, inverse_root, mixing, _ = refresh(fisher, old, rank, damping=0.1)
    assert not accepted
    assert np.array_equal(inverse_root, old) and np.array_equal(mixing, np.eye(dim))


def test_zero_statistics_are_rejected():
    accepted, inverse_root, _, _ = refresh(np.zeros((64, 64)), np.eye(64), 8, damping=0.1)
    assert not accepted and np.array_equal(inverse_root, np.eye(64))


def test_auto_rule():
    assert resolve_rank("auto", (None, 784), -1, 1.0) == 64
    assert resolve_rank("auto", (None, 4096), -1, 1.0) == 256
    assert resolve_rank("auto", (None, 800), -1, 0.1) == 128  # less damping: twice the rank
    assert resolve_rank("auto", (None, 784), -1, 0.01) is None  # small damping: not a flat floor
    assert resolve_rank("auto", (None, 255), -1, 1.0) is None  # narrow
    assert resolve_rank("auto", (None, 28, 784), -1, 1.0) is None  # many rows per example
    assert resolve_rank(32, (None, 28, 100), -1, 0.0) == 32  # an explicit rank applies anywhere
    assert resolve_rank(100, (None, 100), -1, 1.0) is None  # rank >= d: dense
    assert resolve_rank(None, (None, 784), -1, 1.0) is None


@pytest.mark.parametrize("bad", ["full", 0, -3, 2.5, True])
def test_bad_rank_is_a_value_error(bad):
    with pytest.raises(ValueError, match="rank"):
        keras_sngd.LocalFisher(rank=bad)


def test_reconstruct_uses_a_low_rank_before_the_pixels_only():
    model = keras_sngd.reconstruct(paper_mlp(input_shape=(28, 28)))
    fishers = {layer.name: layer for layer in model.layers if isinstance(layer, keras_sngd.LocalFisher)}
    assert fishers["dense_1_local_fisher"]._resolved_rank == 64  # damping 1: fixed features
    assert fishers["dense_2_local_fisher"]._resolved_rank is None  # 80 features
    assert "rank 64 plus identity" in fishers["dense_1_local_fisher"].describe()
    _, report = keras_sngd.reconstruct(paper_mlp(input_shape=(28, 28)), return_report=True)
    assert ("dense_1_local_fisher", "U of rank 64 plus identity (rank='auto'; keras_sngd.low_rank)") in report.notes
    assert "U of rank 64 plus identity" in str(report)
    # A dense U everywhere with rank=None.
    dense = keras_sngd.reconstruct(paper_mlp(input_shape=(28, 28)), local_fisher_arguments={"rank": None})
    assert all(layer._resolved_rank is None for layer in dense.layers if isinstance(layer, keras_sngd.LocalFisher))


def test_config_round_trip_and_files_from_before_rank():
    for rank in (32, "auto", None):
        layer = keras_sngd.LocalFisher(rank=rank)
        assert keras_sngd.LocalFisher.from_config(layer.get_config()).rank == rank
    # The layer's own default is the exact dense U, also for a wide input with large damping.
    config = keras_sngd.LocalFisher(damping=1.0).get_config()
    assert config["rank"] is None
    del config["rank"]  # a file saved before `rank` existed: its U was dense, and stays so
    restored = keras_sngd.LocalFisher.from_config(config)
    restored.build((None, 784))
    assert restored.rank is None and not restored._low_rank()
    auto = keras_sngd.LocalFisher(damping=1.0, rank="auto")
    auto.build((None, 784))
    assert auto._resolved_rank == 64


def test_inference_uses_the_factors():
    layer = keras_sngd.LocalFisher(rank=8, damping=1.0)
    x = np.random.default_rng(0).standard_normal((16, 64)).astype("float32")
    layer(x)
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0].astype("float32")
    layer.low_rank_basis.assign(basis)
    layer.low_rank_scales.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    layer.low_rank_identity_scale.assign(0.7)
    layer.inverse_root.assign(np.asarray(dense_root(layer._current_root(), 64)))
    np.testing.assert_allclose(np.asarray(layer(x)), x @ layer.inverse_root.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_low_rank_training_on_backend(backend):
    report = run_on_installed(backend, SCRIPT)
    assert report["backend"] == backend and report["low_rank"]
    # Function-preserving refreshes with the low-rank U: lr 0 keeps the outputs.
    assert report["refresh_count"] == 4 and report["failed_refresh_count"] == 0
    assert report["lr0_change"] < 1e-4
    assert report["factors_error"] < 1e-6
    if backend == "jax":
        # The refresh's mixing goes to the optimizer as the factors of U_new and U_old, no (d, d) matrix.
        assert report["carrier_shapes"] == [[], [], [], [16], [16], [300, 16], [300, 16]]
    else:
        assert report["carrier_shapes"] == []
    losses = report["losses"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert report["trained_refreshes"] == 8
    assert report["fold_error"] < 1e-4 and report["load_error"] == 0.0 and report["loaded_rank"] == 16


def test_the_benchmark_prints_its_table(fashion_mnist_directory):
    # `benchmarks/low_rank.py`, the experiments behind the rule, on a tiny subset of real data.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "low_rank.py"), "--models", "mlp", "--seeds", "0",
         "--samples", "512"],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(ROOT),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"dense U", "auto", "rank 32"}
    assert "rank 64, drift" in rows["auto"] and rows["dense U"].rstrip().endswith("| dense |")
    for line in rows.values():
        if line.startswith("| run"):
            continue
        assert 0.0 < float(line.split("|")[2]) < 2.3  # below chance loss
