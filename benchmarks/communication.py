"""What the LocalFisher statistics all-reduce costs per training step under tf.distribute (docs/scaling.md).

On 2 logical CPU devices of this machine (MirroredStrategy), the paper's MLP (784-80-80-10, LocalFisher
defaults, SGD) on synthetic 784-feature data:

1. the all-reduce alone: one step's reductions of the three LocalFishers' sums `[X^T X, 1^T X, n]`
   (d = 784, 80, 80: 2.5 MB of float32), timed in a compiled function under the strategy;
2. seconds per training step of `fit` for: plain SGD (no LocalFisher); SNGD with the statistics
   all-reduced every step (what `LocalFisher` does); SNGD with each replica's statistics kept local (no
   reduction: wrong, each replica whitens with its own share; the lower bound);
3. the per-step cost of the cheaper schedules (not implemented in `LocalFisher`; docs/scaling.md), from
   the measured in-step overhead of the reduction, (every step) - (no reduction): reducing every k steps
   costs 1/k of it, reducing only before a refresh 1/update_every of it;
4. the bytes each step's statistics and gradients take, for the paper's MLP, ResNet-18 and VGG-16.

    python benchmarks/communication.py            # about 2 minutes on 2 CPU cores

Prints a table and one JSON line. Logical devices share the host's memory, so (1) is a lower bound for
real devices, where the bytes cross a link (see docs/scaling.md for the bandwidth arithmetic).
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sngd  # noqa: E402
import keras_sngd.distributed  # noqa: E402

WIDTHS = (784, 80, 80)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def allreduce_seconds(strategy, repeats):
    """Seconds for one step's all-reduces of the three layers' statistics (one batched call per layer)."""
    payloads = [[tf.ones((d, d)), tf.ones((d,)), tf.ones(())] for d in WIDTHS]

    @tf.function
    def reduce_all():
        def replica_fn():
            total = tf.constant(0.0)
            for payload in payloads:
                summed = keras_sngd.distributed.sum_across_replicas(payload)
                total += summed[2]
            return total

        return strategy.run(replica_fn)

    reduce_all()  # trace
    start = time.perf_counter()
    for _ in range(repeats):
        result = reduce_all()
    strategy.experimental_local_results(result)[0].numpy()
    return (time.perf_counter() - start) / repeats


def step_seconds(strategy, variant, images, labels, batch, epochs):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        layers = [keras.Input((784,))]
        for units in (80, 80, 10):
            if variant != "sgd":
                layers.append(keras_sngd.LocalFisher())
            layers.append(keras.layers.Dense(units, activation=None if units == 10 else "relu"))
        model = keras.Sequential(layers)
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    original = keras_sngd.distributed.sum_across_replicas
    if variant == "sngd_local":
        keras_sngd.distributed.sum_across_replicas = list
    try:
        timer = EpochTimer()
        model.fit(images, labels, batch_size=batch, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    finally:
        keras_sngd.distributed.sum_across_replicas = original
    steps = len(images) // batch
    return min(timer.times[1:]) / steps  # the first epoch compiles


def sizes():
    """Floats all-reduced per step: LocalFisher statistics (d^2 + d + 1 per layer) and gradients."""
    from keras_sngd.callbacks import local_fishers
    from keras_sngd.models import paper_mlp
    from keras_sngd.models import resnet18_cifar
    from keras_sngd.models import vgg16_cifar

    rows = {}
    for name, build in (("paper_mlp", paper_mlp), ("resnet18_cifar", resnet18_cifar), ("vgg16_cifar", vgg16_cifar)):
        plain = build()
        widths = [layer.inverse_root.shape[0] for layer in local_fishers(keras_sngd.reconstruct(plain))]
        rows[name] = {
            "statistics_floats": sum(d * d + d + 1 for d in widths),
            "gradient_floats": sum(int(np.prod(v.shape)) for v in plain.trainable_variables),
        }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--k", type=int, default=10, help="the 'reduce every k steps' schedule (default 10)")
    args = parser.parse_args()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    images = rng.random((args.samples, 784), dtype=np.float32)
    labels = rng.integers(0, 10, args.samples)

    reduce = allreduce_seconds(strategy, args.repeats)
    # Rounds of the three variants, interleaved, the fastest of each kept: a shared machine's load
    # comes and goes.
    steps = {}
    for _ in range(args.rounds):
        for variant in ("sgd", "sngd_every_step", "sngd_local"):
            seconds = step_seconds(strategy, variant, images, labels, args.batch, args.epochs)
            steps[variant] = min(steps.get(variant, seconds), seconds)
    reduce = min(reduce, allreduce_seconds(strategy, args.repeats))
    update_every = keras_sngd.LocalFisher().update_every
    # What one step's reductions cost inside the train step: they also wait for the slower replica.
    overhead = max(steps["sngd_every_step"] - steps["sngd_local"], 0.0)
    payload_bytes = 4 * sum(d * d + d + 1 for d in WIDTHS)
    rows = [
        ("SGD, no LocalFisher", 0, steps["sgd"], "measured"),
        ("SNGD, reduce every step (LocalFisher)", 1, steps["sngd_every_step"], "measured"),
        ("SNGD, no reduction (wrong: local statistics)", 0, steps["sngd_local"], "measured"),
        (f"SNGD, reduce every k={args.k} steps", 1 / args.k, steps["sngd_local"] + overhead / args.k,
         "no-reduction step + in-step overhead / k"),
        (f"SNGD, reduce before a refresh (every {update_every})", 1 / update_every,
         steps["sngd_local"] + overhead / update_every, "no-reduction step + in-step overhead / update_every"),
    ]
    print(f"2 logical CPU devices, MirroredStrategy; paper MLP, global batch {args.batch}; "
          f"statistics of one step: {payload_bytes / 1e6:.2f} MB, all-reduce {reduce * 1e3:.2f} ms")
    print(f"{'option':52s} {'reductions/step':>15s} {'MB/step':>8s} {'ms/step':>8s}  how")
    for name, per_step, seconds, how in rows:
        print(f"{name:52s} {per_step:15.3f} {per_step * payload_bytes / 1e6:8.3f} {seconds * 1e3:8.2f}  {how}")
    print(f"\n{'model':16s} {'statistics MB':>13s} {'gradients MB':>12s} {'ratio':>6s}   (float32, per step)")
    model_sizes = sizes()
    for name, row in model_sizes.items():
        print(f"{name:16s} {4e-6 * row['statistics_floats']:13.2f} {4e-6 * row['gradient_floats']:12.2f} "
              f"{row['statistics_floats'] / row['gradient_floats']:6.3f}")
    print(json.dumps({"sizes": model_sizes, "allreduce_ms": reduce * 1e3, "payload_bytes": payload_bytes,
                      "step_ms": {key: value * 1e3 for key, value in steps.items()}, "k": args.k,
                      "update_every": update_every, "batch": args.batch}))


if __name__ == "__main__":
    main()
