"""KerasHub backbones whose layers' configs do not rebuild them (keras-hub 0.32 bugs) are whitened inside
(`keras_sngd.config_repair`), and their reconstructions fold and reload. Before, `reconstruct` copied each
of them whole with no LocalFisher. The layer-level cases are in `test_graph_corners.py`."""

import warnings

import keras
import numpy as np
import pytest
from tests.inputs import assert_outputs_close

import keras_sngd

keras_hub = pytest.importorskip("keras_hub", reason="KerasHub models need keras-hub (pip install -e '.[tests]')")

TOKENS = {"token_ids": np.random.default_rng(0).integers(1, 50, (2, 8)).astype("int32"),
          "padding_mask": np.ones((2, 8), "int32")}
IMAGES = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
TINY = dict(vocabulary_size=50, num_layers=1, hidden_dim=8, intermediate_dim=16)

BACKBONES = {
    # A derived key in the patch embedding's config.
    "vit": (lambda: keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16), IMAGES),
    # The same in the embedding; the encoder's `get_config` fails (rebuilt from Keras's recorded arguments).
    "deit": (lambda: keras_hub.models.DeiTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
                                                   hidden_dim=8, intermediate_dim=16), IMAGES),
    # The decoder's `get_config` reads a renamed attribute (rebuilt from its attributes).
    "llama": (lambda: keras_hub.models.LlamaBackbone(num_query_heads=2, num_key_value_heads=1, **TINY), TOKENS),
    # A required argument left out of the decoder's config.
    "qwen3": (lambda: keras_hub.models.Qwen3Backbone(head_dim=4, num_query_heads=2, num_key_value_heads=1, **TINY),
              TOKENS),
    # A key `build` sets in the decoder's config.
    "gpt_neox": (lambda: keras_hub.models.GPTNeoXBackbone(num_heads=2, max_sequence_length=16, rotary_percentage=0.5,
                                                          **TINY), TOKENS),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_keras_hub_backbones_with_broken_layer_configs_are_whitened_inside(name, tmp_path):
    build, inputs = BACKBONES[name]
    keras.utils.set_random_seed(0)
    plain = build()
    expected = plain(inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*copied whole.*")
        sngd, report = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments={"update_every": 2})
    assert report.inserted and all("/" in entry[0] for entry in report.inserted), str(report)
    assert not any("copied whole" in reason for _, _, reason in report.skipped), str(report)
    # No Dense or EinsumDense left out anywhere.
    assert not any(kind in ("Dense", "EinsumDense") for _, kind, _ in report.skipped), str(report)
    assert_outputs_close(sngd(inputs), expected, rtol=0.0)
    targets = keras.tree.map_structure(lambda value: np.zeros(value.shape, "float32"), expected)
    sngd.compile(keras.optimizers.SGD(0.01), "mse")
    for _ in range(3):
        assert np.isfinite(sngd.train_on_batch(inputs, targets))
    fishers = [layer for _, layer in keras_sngd.graph.walk_layers(sngd) if isinstance(layer, keras_sngd.LocalFisher)]
    assert len(fishers) == len(report.inserted)
    assert all(int(keras.ops.convert_to_numpy(fisher.refresh_count)) >= 1 for fisher in fishers)
    trained = sngd(inputs)
    folded = keras_sngd.fold(sngd)
    assert_outputs_close(folded(inputs), trained, rtol=1e-4)
    sngd.save(tmp_path / "sngd.keras")
    folded.save(tmp_path / "folded.keras")
    assert_outputs_close(keras.saving.load_model(tmp_path / "sngd.keras")(inputs), trained, rtol=1e-6)
    assert_outputs_close(keras.saving.load_model(tmp_path / "folded.keras")(inputs), trained, rtol=1e-4)
