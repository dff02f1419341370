"""LocalFishers inside composite layers (`keras_sngd.InnerWhitening`), on the backend of `KERAS_BACKEND`
(`tests/test_inner_whitening.py`). Prints a JSON report as its last line.

For each model: `reconstruct` wraps each composite layer and puts one LocalFisher before each tensor its
inner Dense/EinsumDense layers read; through SGD(0.0) only the refreshes change weights, so the outputs
must not move (each refresh re-expresses the inner kernels); then real training lowers the loss, `fold`
gives the trained function with the plain composite back, and a `.keras` file reloads it.
"""

import json
import os
import tempfile

import keras
import numpy as np

import keras_sngd

L = keras.layers


@keras.saving.register_keras_serializable(package="inner_whitening_check")
class GatedBlock(L.Layer):
    """A user's block: a gated MLP (two projections read the input: one LocalFisher for both) and a
    residual connection; its inner layers are made in `__init__` and built by the first call."""

    def __init__(self, width, hidden, **kwargs):
        super().__init__(**kwargs)
        self.width, self.hidden = width, hidden
        self.gate = L.Dense(hidden, name="gate")
        self.up = L.Dense(hidden, name="up")
        self.down = L.Dense(width, name="down")
        self.norm = L.LayerNormalization(name="norm")

    def call(self, inputs):
        x = self.norm(inputs)
        return inputs + self.down(keras.ops.silu(self.gate(x)) * self.up(x))

    def get_config(self):
        return dict(super().get_config(), width=self.width, hidden=self.hidden)


def head(x):
    return L.Dense(3, name="logits")(L.GlobalAveragePooling1D()(x))


def gated_blocks(inputs):
    x = L.Dense(8, name="embed")(inputs)
    return head(GatedBlock(8, 12, name="block_2")(GatedBlock(8, 12, name="block_1")(x)))


def keras_hub_encoder(inputs):
    import keras_hub

    x = L.Dense(8, name="embed")(inputs)
    x = keras_hub.layers.TransformerEncoder(intermediate_dim=16, num_heads=2, name="encoder")(x)
    return head(x)


def keras_hub_decoder(inputs):
    import keras_hub

    x = L.Dense(8, name="embed")(inputs)
    memory = L.Dense(8, name="memory")(inputs)
    # Self-attention (query, key and value: one tensor) and cross-attention (the query from the decoder, the
    # key and value from the memory) inside one composite layer.
    x = keras_hub.layers.TransformerDecoder(intermediate_dim=16, num_heads=2, name="decoder")(x, memory)
    return head(x)


def sequential_blocks():
    return keras.Sequential([keras.Input((5, 6)), L.Dense(8, name="embed"), GatedBlock(8, 12, name="block"),
                             L.GlobalAveragePooling1D(), L.Dense(3, name="logits")], name="sequential_blocks")


def installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


MODELS = {
    # name: (builder, the inner LocalFishers expected)
    "gated_blocks": (gated_blocks, 4),
    "sequential_blocks": (None, 2),
}
if installed("keras_hub"):
    # The attention's query/key/value (one tensor) and output projection, the MLP's two layers; the
    # decoder's cross-attention reads two tensors (query; key and value) and has its own output projection.
    MODELS["keras_hub_encoder"] = (keras_hub_encoder, 4)
    MODELS["keras_hub_decoder"] = (keras_hub_decoder, 7)


def inner_fishers(model):
    return [fisher for layer in model.layers if isinstance(layer, keras_sngd.InnerWhitening) for fisher in layer.fishers]


def check(name, build, rng):
    keras.utils.set_random_seed(0)
    if build is None:
        plain = sequential_blocks()
    else:
        inputs = keras.Input((5, 6))
        plain = keras.Model(inputs, build(inputs), name=name)
    features = rng.normal(size=(128, 5, 6)).astype("float32")
    labels = rng.integers(0, 3, 128)
    model, report = keras_sngd.reconstruct(plain, return_report=True, local_fisher_arguments={"update_every": 4})
    probe = features[:16]
    before = keras.ops.convert_to_numpy(model(probe))
    same_at_start = float(np.max(np.abs(before - keras.ops.convert_to_numpy(plain(probe)))))
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(features, labels, batch_size=16, epochs=3, verbose=0)
    after = keras.ops.convert_to_numpy(model(probe))
    fishers = inner_fishers(model)
    refreshes = [int(keras.ops.convert_to_numpy(fisher.refresh_count)) for fisher in fishers]
    steps = [int(keras.ops.convert_to_numpy(fisher.step)) for fisher in fishers]
    # Then train: the same compiled step at a learning rate of 0.05 (the rate is an optimizer variable),
    # not a second compile, whose trace and XLA compilation per model made most of this script's time.
    model.optimizer.learning_rate = 0.05
    losses = model.fit(features, labels, batch_size=16, epochs=4, verbose=0).history["loss"]
    trained = keras.ops.convert_to_numpy(model(probe))
    folded = keras_sngd.fold(model)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        loaded_fishers = inner_fishers(loaded)
        folded_path = os.path.join(directory, "folded.keras")
        folded.save(folded_path)
        folded_loaded = keras.saving.load_model(folded_path)
    return {
        "inner_local_fishers": sorted(fisher.name for fisher in fishers),
        "inserted": [entry[2] for entry in report.inserted],
        "skipped": [entry[0] for entry in report.skipped],
        "same_at_start": same_at_start,
        "refreshes": refreshes,
        "steps": steps,
        "relative_change": float(np.max(np.abs(after - before)) / np.max(np.abs(before))),
        "losses": [float(loss) for loss in losses],
        "fold_error": float(np.max(np.abs(keras.ops.convert_to_numpy(folded(probe)) - trained)) / np.max(np.abs(trained))),
        "folded_plain": not any(isinstance(layer, (keras_sngd.LocalFisher, keras_sngd.InnerWhitening))
                                for layer in folded.layers),
        "folded_load_error": float(np.max(np.abs(keras.ops.convert_to_numpy(folded_loaded(probe)) - trained))),
        "load_error": float(np.max(np.abs(keras.ops.convert_to_numpy(loaded(probe)) - trained))),
        "loaded_state_equal": all(
            np.array_equal(keras.ops.convert_to_numpy(a.inverse_root), keras.ops.convert_to_numpy(b.inverse_root))
            and int(keras.ops.convert_to_numpy(a.step)) == int(keras.ops.convert_to_numpy(b.step))
            for a, b in zip(fishers, loaded_fishers)) and len(loaded_fishers) == len(fishers),
    }


def main():
    rng = np.random.default_rng(0)
    results = {name: dict(check(name, build, rng), expected=expected) for name, (build, expected) in MODELS.items()}
    print(json.dumps({"backend": keras.backend.backend(), "models": results}))


if __name__ == "__main__":
    main()
