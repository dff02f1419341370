"""Data parallelism: every replica whitens with `G^(-1/2)` of the global batch, as one device would.

Each case runs in a subprocess: logical CPU devices (TensorFlow) and the host device count (JAX) must be
set before the backend starts, and would disturb the other tests.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")


def run_script(name, backend, *arguments, **environment):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[tests]' installs it)")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", **environment)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, name), *arguments],
        capture_output=True, text=True, env=env, timeout=600, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_state(reference, other):
    """Float32 tolerance for every LocalFisher variable and weight; counters exactly."""
    assert reference.keys() == other.keys()
    for name in reference:
        if name == "weights":
            for expected, actual in zip(reference[name], other[name]):
                np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
        elif name.endswith(("step", "refresh_count")):
            assert reference[name] == other[name], name
        else:
            np.testing.assert_allclose(other[name], reference[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_mirrored_strategy_matches_one_device():
    """MirroredStrategy, 2 logical CPUs, halves of every global batch drawn differently, a refresh every
    step: the state after `fit` is the one-device state, and both replicas hold identical copies."""
    report = run_script("distributed_check.py", "tensorflow")
    assert report["replicas_in_sync"] == 2
    assert report["single"]["0.refresh_count"] > 0
    assert_same_state(report["single"], report["mirrored"])
    for name, copies in report["replicas"].items():
        assert len(copies) == 2, name
        assert copies[0] == copies[1], f"replicas differ in {name}"


def test_jax_data_parallel_matches_one_device():
    """keras.distribution.DataParallel on 2 JAX host devices: the same state as one device."""
    report = run_script(
        "jax_data_parallel_check.py", "jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    assert report["devices"] == 2 and "batch" in report["sharding"]
    assert report["single"]["0.refresh_count"] > 0
    assert_same_state(report["single"], report["parallel"])


def test_one_device_is_the_identity():
    """Off a multi-replica context the reduction changes nothing and the moments are the batch's."""
    import keras

    from keras_sngd.distributed import in_replica_context
    from keras_sngd.distributed import sum_across_replicas
    from keras_sngd.statistics import batch_moments

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype("float32")
    values = [keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(2.0)]
    summed = sum_across_replicas(values)
    assert not in_replica_context() and len(summed) == 2 and summed[0] is values[0]
    for axis in (-1, 1):
        moments = batch_moments(x, axis)
        rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(moments.second_moment), rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(moments.mean), rows.mean(axis=0), rtol=1e-5, atol=1e-6)
