import importlib.util
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent JAX compilation cache for the whole run, shared by the xdist workers and by every subprocess
# the tests start (they inherit the environment). Most of the JAX tests' time is XLA compiling programs that
# another model, script or process of the same run already compiled: the same initializers, the same eager
# ops, the same train steps under new function objects. With the cache each distinct program is compiled
# once per run; what every test checks is unchanged. The directory is new for each run (nothing carries over
# between runs) and removed at the end; `JAX_COMPILATION_CACHE_DIR=""` switches it off, a directory of your
# own is used as it is. The size limit switches on JAX's file locks (the `filelock` package, a test extra;
# without it there is no cache), so that two processes never read a half-written entry.
_JAX_CACHE_CREATED = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and importlib.util.find_spec("filelock") is not None:
    _JAX_CACHE_CREATED = tempfile.mkdtemp(prefix="keras_sngd_tests_jax_cache_")
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_JAX_CACHE_CREATED,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_COMPILATION_CACHE_MAX_SIZE=str(4 * 2**30),
    )

# Compiler optimization levels for a run of small models, where compiling takes far longer than running.
# XLA (JAX, and TensorFlow's jit_compile) generates code with LLVM's optimizations off: same programs, same
# numerics up to rounding, compiled about a quarter faster (tests/scripts/wrappers_check.py on JAX: 61 s ->
# 45 s). TensorFlow's graph optimizer (grappler) is off in the test processes themselves (about 8% of
# their time); the TensorFlow scripts the tests run in subprocesses keep it, so the whole pipeline is
# still checked under the optimizer users run. `KERAS_SNGD_TESTS_OPTIMIZE=1` keeps every default; an
# `XLA_FLAGS` of your own replaces the XLA setting (grappler stays off).
_OPTIMIZE = os.environ.get("KERAS_SNGD_TESTS_OPTIMIZE", "0") == "1"
if not _OPTIMIZE:
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import keras  # noqa: E402  (imports jax, which reads the variables above)
import pytest  # noqa: E402

if not _OPTIMIZE and keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # noqa: E402

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def pytest_unconfigure(config):
    """The process that created the run's JAX compilation cache removes it."""
    if _JAX_CACHE_CREATED is not None:
        shutil.rmtree(_JAX_CACHE_CREATED, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_keras_state():
    """Each test starts with fresh layer names, the float32 policy and a fixed seed.

    Without the full garbage collection `clear_session` makes by default (`free_memory=True`): in a test
    process that holds TensorFlow, JAX and the models of earlier tests, one `gc.collect()` takes a few
    tenths of a second before each of the suite's 760 tests (tests/test_newton_schulz.py, test_radam.py,
    test_statistics.py and test_local_fisher.py, 212 tests in one process: 98 s with it, 57 s without; the
    whole suite on 2 cores: 16 min 29 s with it, 14 min 31 s without). Python's own collector still frees the cycles of earlier
    tests' models; what each test checks is unchanged."""
    keras.backend.clear_session(free_memory=False)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def fashion_mnist_directory():
    """The real Fashion-MNIST IDX directory, or a skip that says how to install it."""
    from keras_sngd.datasets.idx import FASHION_MNIST_DIRECTORY

    if not os.path.isdir(FASHION_MNIST_DIRECTORY):
        pytest.skip(f"real Fashion-MNIST not installed: apt-get install dataset-fashion-mnist ({FASHION_MNIST_DIRECTORY})")
    return FASHION_MNIST_DIRECTORY
