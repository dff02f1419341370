"""reconstruct/fold on keras.applications models (weights=None, 32x32 inputs): real graphs with BatchNorm,
residual Adds, depthwise convolutions (skipped) and up to 2048 channels."""

import os

import keras
import numpy as np
import pytest
from tests.inputs import local_fishers

import keras_sngd

APPLICATIONS = {
    "VGG16": lambda: keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg"),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False, pooling="avg"
    ),
}
# ResNet50 (54 LocalFishers) took 85 s here: its residual/BatchNorm graph is covered by resnet18_cifar in
# tests/test_reference_models.py and the constructor corpus (tests/test_constructor_corpus.py).
EXPECTED_INSERTED = {"VGG16": 13, "MobileNetV2": 35}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_application_round_trip(name, tmp_path):
    plain = APPLICATIONS[name]()
    rng = np.random.default_rng(0)
    probe = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    expected = np.asarray(plain(probe))
    sngd, report = keras_sngd.reconstruct(plain, local_fisher_arguments={"update_every": 2}, return_report=True)
    assert len(report.inserted) == EXPECTED_INSERTED[name]
    if name == "MobileNetV2":
        assert sum("DepthwiseConv2D" == kind for _, kind, _ in report.skipped) == 17
    np.testing.assert_array_equal(np.asarray(sngd(probe)), expected)

    path = os.path.join(tmp_path, "sngd.keras")
    sngd.save(path)
    sngd = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(sngd(probe)), expected)

    # MobileNetV2 eagerly: a compiled train step would spend about 12 s more tracing its 35 LocalFishers;
    # VGG16 covers the compiled step on an application.
    sngd.compile(keras.optimizers.SGD(0.01), "mse", run_eagerly=name == "MobileNetV2")
    targets = np.zeros_like(expected)
    sngd.train_on_batch(probe, targets)
    sngd.train_on_batch(probe, targets)  # step 2: every LocalFisher refreshes
    fishers = local_fishers(sngd)
    assert all(int(f.refresh_count.numpy()) == 1 for f in fishers)
    assert all(f.refresh_mode.kind == "function-preserving" for f in fishers)
    trained = np.asarray(sngd(probe))

    folded = keras_sngd.fold(sngd)
    assert not local_fishers(folded)
    assert len(folded.weights) == len(plain.weights)
    np.testing.assert_allclose(np.asarray(folded(probe)), trained, rtol=1e-3, atol=1e-4 * np.abs(trained).max())
