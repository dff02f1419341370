"""Partial whitening, `U = G_d^(-alpha/2)`, against SNGD's full whitening (`alpha = 1`): test accuracy (#8).

Amari et al. (ICLR 2021, "When does preconditioning help or hurt generalization?") show that a
preconditioner between gradient descent (`alpha = 0`) and natural gradient (`alpha = 1`) can generalize
better than both. This experiment asks whether a partial whitening closes SNGD's gap to Muon on the
paper's MLP. It replaces each LocalFisher's refresh by an exact one, from a float64 `eigh` of `G_d`:

```
G_d = Q diag(lambda) Q^T,   U = Q diag(lambda^(-alpha/2)) Q^T,   M = U_new^-1 U_old   (function kept)
```

with a dense `U` everywhere (`rank=None`) and a refresh every 10 steps (`refresh_tolerance=0`: the drift
check measures the distance to full whitening, which a partial one never reaches). It is a prototype to
measure, not an option of the layer: `eigh` at every refresh costs far more than Newton-Schulz.

    python benchmarks/partial_whitening.py --alpha 1.0 0.75 0.5 --learning-rate 0.1 0.1 0.4 --seeds 0

All 60,000 real Fashion-MNIST training images, batch 64, 5 epochs, `reconstruct`'s other defaults,
`keras.optimizers.SGD`; test accuracy on the 10,000 test images.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from keras import ops  # noqa: E402

import keras_sngd  # noqa: E402
import keras_sngd.fisher_layer  # noqa: E402
from benchmarks.stability_common import plain_model  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.linear_algebra import damped  # noqa: E402
from keras_sngd.refresh import RefreshResult  # noqa: E402


def eigh_refresh(alpha):
    """A replacement for the layer's warm refresh: `U = G_d^(-alpha/2)` exactly, and its mixing."""

    def refresh(fisher, inverse_root, damping, iterations=None, dtype="float32"):
        dim = fisher.shape[-1]
        identity = ops.eye(dim, dtype="float32")
        values, vectors = ops.eigh(ops.cast(damped(ops.cast(fisher, "float32"), damping, identity), "float64"))
        values = ops.maximum(values, 1e-12)
        new = ops.matmul(vectors * (values ** (-alpha / 2))[None, :], ops.transpose(vectors))
        inverse_new = ops.matmul(vectors * (values ** (alpha / 2))[None, :], ops.transpose(vectors))
        mixing = ops.cast(ops.matmul(inverse_new, ops.cast(inverse_root, "float64")), "float32")
        new = ops.cast(new, "float32")
        accepted = ops.isfinite(ops.sum(new)) & ops.isfinite(ops.sum(mixing))
        return RefreshResult(ops.where(accepted, new, inverse_root), ops.where(accepted, mixing, identity),
                             ops.zeros((dim,), "float32"), accepted, ops.convert_to_tensor(1, "int32"))

    return refresh


def run(alpha, learning_rate, seed, data_dir):
    """`(final training loss, test accuracy)` of the paper's MLP trained with `U = G_d^(-alpha/2)`."""
    keras_sngd.fisher_layer._warm_refresh = eigh_refresh(alpha)
    train_images, train_labels = load_dataset("fashion_mnist", "train", data_dir=data_dir)
    test_images, test_labels = load_dataset("fashion_mnist", "test", data_dir=data_dir)
    train_images = train_images.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    test_images = test_images.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    keras.utils.set_random_seed(seed)
    model = keras_sngd.reconstruct(plain_model("mlp"),
                                   local_fisher_arguments={"rank": None, "refresh_tolerance": 0.0})
    model.compile(keras.optimizers.SGD(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss = model.fit(train_images, train_labels, batch_size=64, epochs=5, verbose=0).history["loss"][-1]
    accuracy = model.evaluate(test_images, test_labels, batch_size=512, verbose=0, return_dict=True)["accuracy"]
    return loss, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    parser.add_argument("--learning-rate", type=float, nargs="+", default=[0.1, 0.1, 0.4],
                        help="one per alpha (a partial whitening amplifies less: it takes a larger rate)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args(argv)
    if len(args.learning_rate) != len(args.alpha):
        parser.error(f"--learning-rate needs one value per --alpha: {args.learning_rate} for {args.alpha}")
    print(f"paper MLP, all of Fashion-MNIST, batch 64, 5 epochs; keras {keras.__version__}, "
          f"backend {keras.backend.backend()}")
    print("| alpha | learning rate | seed | final training loss | test accuracy |")
    print("|---|---|---|---|---|")
    for alpha, learning_rate in zip(args.alpha, args.learning_rate):
        for seed in args.seeds:
            loss, accuracy = run(alpha, learning_rate, seed, args.data_dir)
            print(f"| {alpha} | {learning_rate} | {seed} | {loss:.4f} | {accuracy:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
