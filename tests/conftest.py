import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_keras_state():
    """Each test starts with fresh layer names, the float32 policy and a fixed seed."""
    keras.backend.clear_session()
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
