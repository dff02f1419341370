"""`reconstruct`, training, `fold` and `.keras` saving on KerasHub backbones built from tiny configs.

KerasHub's language models keep their Dense/EinsumDense layers inside composite decoder and encoder
layers, which `reconstruct` whitens inside (`keras_sngd.InnerWhitening`). For each backbone (2 layers,
hidden size 8, vocabulary 50, sequences of 8 tokens, seed 0) this prints: how many LocalFishers were
inserted and how many of them inside composite layers, what was left out inside them, the largest change
of the outputs at the start (`same`: must be 0), their relative change through 16 steps of `SGD(0.0)`
with the refreshes that fall in them (`sgd0`: the refresh keeps the function), how many LocalFishers
refreshed, the training loss of 3 epochs of `SGD(0.05)` towards zero outputs, the relative difference of
`fold`'s model (`fold`) and the difference after a `.keras` round trip (`load`). Llama's, GPT-NeoX's and
Qwen3's decoder blocks cannot be rebuilt from their own configs in keras-hub 0.32 (a KerasHub bug);
`keras_sngd.config_repair` repairs them. A backbone with a layer it cannot repair is copied whole, with no
LocalFisher (`inserted` 0).

    python benchmarks/keras_hub_backbones.py                       # every backbone
    KERAS_BACKEND=jax python benchmarks/keras_hub_backbones.py --backbones gpt2,gemma
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402

TINY = dict(vocabulary_size=50, num_layers=2, hidden_dim=8, intermediate_dim=16)


def backbones():
    import keras_hub

    models = keras_hub.models
    heads = dict(num_query_heads=2, num_key_value_heads=1)
    return {
        "gpt2": lambda: models.GPT2Backbone(num_heads=2, max_sequence_length=16, **TINY),
        "llama": lambda: models.LlamaBackbone(**heads, **TINY),
        "mistral": lambda: models.MistralBackbone(**heads, **TINY),
        "gemma": lambda: models.GemmaBackbone(head_dim=4, **heads, **TINY),
        "qwen": lambda: models.QwenBackbone(**heads, **TINY),
        "phi3": lambda: models.Phi3Backbone(**heads, **TINY),
        "falcon": lambda: models.FalconBackbone(num_attention_heads=2, **TINY),
        "opt": lambda: models.OPTBackbone(num_heads=2, max_sequence_length=16, **TINY),
        "roberta": lambda: models.RobertaBackbone(num_heads=2, max_sequence_length=16, **TINY),
        "distil_bert": lambda: models.DistilBertBackbone(num_heads=2, max_sequence_length=16, **TINY),
        "gpt_neox": lambda: models.GPTNeoXBackbone(num_heads=2, max_sequence_length=16, rotary_percentage=0.5, **TINY),
        "qwen3": lambda: models.Qwen3Backbone(head_dim=4, **heads, **TINY),
    }


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def check(build):
    keras.utils.set_random_seed(0)
    plain = build()
    rng = np.random.default_rng(0)
    probe = {"token_ids": rng.integers(1, 50, (4, 8)).astype("int32"), "padding_mask": np.ones((4, 8), "int32")}
    start = numpy(plain(probe))
    model, report = keras_sngd.reconstruct(plain, return_report=True)
    row = {"inserted": len(report.inserted), "inside": sum("/" in entry[0] for entry in report.inserted),
           "left out inside": "; ".join(sorted({reason.split(":")[0] for path, _, reason in report.skipped if "/" in path})),
           "same": float(np.abs(numpy(model(probe)) - start).max())}
    data = {key: np.concatenate([value] * 8) for key, value in probe.items()}
    targets = np.zeros((32,) + start.shape[1:], "float32")
    model.compile(keras.optimizers.SGD(0.0), "mse")
    before = numpy(model(probe))
    model.fit(data, targets, batch_size=4, epochs=2, verbose=0)
    row["sgd0"] = float(np.abs(numpy(model(probe)) - before).max() / np.abs(before).max())
    fishers = [layer for _, layer in keras_sngd.graph.walk_layers(model) if isinstance(layer, keras_sngd.LocalFisher)]
    row["refreshed"] = sum(int(numpy(fisher.refresh_count)) > 0 for fisher in fishers)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    row["loss"] = " ".join(f"{loss:.3f}" for loss in model.fit(data, targets, batch_size=4, epochs=3, verbose=0).history["loss"])
    trained = numpy(model(probe))
    row["fold"] = float(np.abs(numpy(keras_sngd.fold(model)(probe)) - trained).max() / np.abs(trained).max())
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        row["load"] = float(np.abs(numpy(keras.saving.load_model(path)(probe)) - trained).max())
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()
    import keras_hub

    cases = backbones()
    names = args.backbones.split(",") if args.backbones else list(cases)
    print(f"keras {keras.__version__}, keras-hub {keras_hub.__version__}, backend {keras.backend.backend()}")
    columns = ["inserted", "inside", "same", "sgd0", "refreshed", "loss", "fold", "load", "left out inside"]
    print("| backbone | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for name in names:
        row = check(cases[name])
        cells = [f"{row[c]:.1e}" if isinstance(row[c], float) and c != "same" else str(row[c]) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
