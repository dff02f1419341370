"""Host synchronizations per training step on the PyTorch backend, SGD against SNGD (#7's GPU target).

PyTorch runs a Keras training step eagerly and launches its kernels asynchronously on a GPU: the step is
fast when Python can queue kernels ahead of the device. Three things make the host wait for the device
(on a CPU they cost little, so this counts them instead of timing them):

- `Tensor.item()` and `bool(tensor)`: a device value read on the host (`keras.ops.cond` on PyTorch is a
  Python `if` on its predicate);
- `torch.as_tensor(python_number, device=...)`, which `keras.ops` does for every Python number it is
  given (`ops.where(ok, x, 0.0)`): a blocking host-to-device copy, which PyTorch ends with
  `cudaStreamSynchronize`.

For each model (`keras_sngd.models.resnet18_cifar`, `vgg16_cifar`; random 32x32x3 images, 10 classes)
the script fits the plain model and its `reconstruct`ion with SGD(0.01, momentum 0.9) and prints the
synchronizations per step, all of them and those whose call stack passes through `keras_sngd`, over all
steps and over the steps that neither check nor refresh (`update_every` 10: the others), and the CPU's
milliseconds per step (with `--threads` torch threads, 1 by default). Run:

    KERAS_BACKEND=torch python benchmarks/torch_host_syncs.py [--models resnet18] [--width 0.125] [--batch 8]
"""

import argparse
import collections
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class Counter:
    """Counts host synchronizations, in total and from `keras_sngd`, per training batch."""

    def __init__(self, torch):
        self.torch = torch
        self.per_batch = []
        self.sites = collections.Counter()
        self.active = False

    def note(self):
        if not self.active or not self.per_batch:  # (before the first batch: the data's setup)
            return
        stack = traceback.extract_stack()[:-2]
        package = [frame for frame in stack if os.sep + "keras_sngd" + os.sep in frame.filename]
        self.per_batch[-1][0] += 1
        if package:
            self.per_batch[-1][1] += 1
            self.sites[f"{os.path.basename(package[-1].filename)}:{package[-1].lineno}"] += 1

    def install(self):
        torch, counter = self.torch, self
        item, to_bool, as_tensor = torch.Tensor.item, torch.Tensor.__bool__, torch.as_tensor

        def counted_item(tensor):
            counter.note()
            return item(tensor)

        def counted_bool(tensor):
            counter.note()
            return to_bool(tensor)

        def counted_as_tensor(value, *args, **kwargs):
            if isinstance(value, (bool, int, float)):
                counter.note()
            return as_tensor(value, *args, **kwargs)

        torch.Tensor.item, torch.Tensor.__bool__, torch.as_tensor = counted_item, counted_bool, counted_as_tensor


def measure(builder, sngd, batch, steps, counter):
    import keras
    import numpy as np

    import keras_sngd

    keras.utils.set_random_seed(0)
    model = builder()
    if sngd:
        model = keras_sngd.reconstruct(model)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 32, 32, 3), "float32")
    y = rng.integers(0, 10, batch * steps)
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # build, first steps

    class Batches(keras.callbacks.Callback):
        def on_train_batch_begin(self, index, logs=None):
            counter.per_batch.append([0, 0])

    counter.per_batch, counter.sites = [], collections.Counter()
    counter.active = True
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[Batches()])
    seconds = time.perf_counter() - start
    counter.active = False
    # The steps 3 .. 2 + steps of the model; those that check (every 10th) are the others.
    quiet = [counts for index, counts in enumerate(counter.per_batch) if (index + 3) % 10 != 0]
    return {
        "ms_per_step": 1000 * seconds / steps,
        "all": sum(c[0] for c in counter.per_batch) / steps,
        "package": sum(c[1] for c in counter.per_batch) / steps,
        "quiet_all": sum(c[0] for c in quiet) / len(quiet),
        "quiet_package": sum(c[1] for c in quiet) / len(quiet),
        "sites": counter.sites.most_common(8),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18", help="comma-separated: resnet18, vgg16")
    parser.add_argument("--width", type=float, default=0.125, help="channel width multiplier")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier timings on a shared 2-core machine)")
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit("Run with KERAS_BACKEND=torch.")
    import torch

    torch.set_num_threads(args.threads)
    from keras_sngd.models import resnet18_cifar
    from keras_sngd.models import vgg16_cifar

    builders = {"resnet18": resnet18_cifar, "vgg16": vgg16_cifar}
    counter = Counter(torch)
    counter.install()
    print(f"PyTorch {torch.__version__}, Keras {keras.__version__}; width {args.width}, batch {args.batch}, "
          f"{args.steps} steps; host synchronizations per step (item, bool, Python numbers copied to the device)")
    print("| model | run | ms/step (CPU) | all steps: total | from keras_sngd | steps without a check: total | "
          "from keras_sngd |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for sngd in (False, True):
            result = measure(lambda: builders[name](width=args.width), sngd, args.batch, args.steps, counter)
            print(f"| {name} | {'SNGD' if sngd else 'SGD'} | {result['ms_per_step']:.1f} | {result['all']:.1f} | "
                  f"{result['package']:.1f} | {result['quiet_all']:.1f} | {result['quiet_package']:.1f} |")
            if sngd:
                print(f"  where, from keras_sngd (all steps): {result['sites']}")


if __name__ == "__main__":
    main()
