"""Test accuracy after 5 epochs on the whole of Fashion-MNIST: SNGD against Adam and Muon (issue #8).

For each model and seed, on all 60,000 real Fashion-MNIST training images (batch 64, shuffled, 5 epochs),
the final training loss and the accuracy on the 10,000 test images of:

- Adam and Muon (`keras.optimizers.Muon`, which uses Adam for the variables that are not matrices) at lr
  1e-3 and 3e-3, with Keras's defaults otherwise (Muon's include `weight_decay=0.1`);
- SNGD = `keras_sngd.reconstruct(model)` trained with `keras.optimizers.SGD(0.1)`: what a user writes;
- "SNGD 0.1 one damping": the same with one damping for every LocalFisher (the network's default, passed as
  `local_fisher_arguments={"damping": ...}`), i.e. without `reconstruct`'s stronger damping before Dense
  layers that read fixed features (`keras_sngd.layer_defaults.fixed_feature_damping`): the before/after of
  that rule.

    python benchmarks/generalization.py                          # the MLP, 3 seeds: about 6 minutes on 2 cores
    python benchmarks/generalization.py --models cnn_bn --seeds 0 --runs "Adam 0.001,Muon 0.001,SNGD 0.1"

It prints one markdown table per model, mean ± standard deviation over the seeds.
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
from benchmarks.stability_common import load_subset  # noqa: E402
from benchmarks.stability_common import plain_model  # noqa: E402
from keras_sngd.layer_defaults import default_arguments  # noqa: E402


def _runs():
    runs = {}
    for rate in (1e-3, 3e-3):
        runs[f"Adam {rate:g}"] = (lambda rate=rate: keras.optimizers.Adam(rate), None)
        runs[f"Muon {rate:g}"] = (lambda rate=rate: keras.optimizers.Muon(learning_rate=rate), None)
    runs["SNGD 0.1"] = (lambda: keras.optimizers.SGD(0.1), lambda model: {})
    runs["SNGD 0.1 one damping"] = (
        lambda: keras.optimizers.SGD(0.1),
        lambda model: {"damping": default_arguments(model).get("damping", 0.01)},
    )
    return runs


RUNS = _runs()


def run(model_name, label, seed, train, test, epochs):
    """`(final training loss, test accuracy)` of one run."""
    optimizer, local_fisher = RUNS[label]
    keras.utils.set_random_seed(seed)
    model = plain_model(model_name)
    if local_fisher is not None:
        model = keras_sngd.reconstruct(model, local_fisher_arguments=local_fisher(model))
    model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    loss = model.fit(*train, batch_size=64, epochs=epochs, verbose=0).history["loss"][-1]
    accuracy = model.evaluate(*test, batch_size=512, verbose=0, return_dict=True)["accuracy"]
    return (loss if np.isfinite(loss) else float("nan")), accuracy


def _cell(values, digits):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp", help="comma-separated keras_sngd.models.REFERENCE_MODELS names")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60000, help="training images (the first N)")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated, from: " + ", ".join(RUNS))
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.runs.split(",") if label.strip()]
    unknown = [label for label in labels if label not in RUNS]
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    train, test = load_subset(args.samples), load_subset(10000, "test")
    for model_name in args.models.split(","):
        print(f"\n{model_name}: {len(train[0])} training images, batch 64, {args.epochs} epochs, seeds {args.seeds}; "
              f"keras {keras.__version__}, backend {keras.backend.backend()}")
        print("| run | test accuracy | final training loss | per seed (test accuracy) |\n|---|---|---|---|")
        for label in labels:
            results = [run(model_name, label, seed, train, test, args.epochs) for seed in seeds]
            losses, accuracies = [r[0] for r in results], [r[1] for r in results]
            print(f"| {label} | {_cell(accuracies, 4)} | {_cell(losses, 4)} | "
                  + " ".join(f"{a:.4f}" for a in accuracies) + " |", flush=True)


if __name__ == "__main__":
    main()
