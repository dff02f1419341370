"""The paper's MLP on the JAX backend: Adam against SNGD refreshed inside the step (the default) and
between steps (`FunctionPreservingRefresh`); first-epoch and later-epoch wall-clock times.

    KERAS_BACKEND=jax python benchmarks/jax_refresh_paths.py [--data-dir DIR] [--samples 20000]

Each run is a new process (`--run NAME` runs one: adam, default, callback), so that no compilation is
shared: the first epoch includes tracing and XLA's compilation. Real Fashion-MNIST (IDX files in
`--data-dir`, default /usr/share/datasets/fashion-mnist), batch 64, SGD(0.1) on `reconstruct`'s defaults,
Adam(1e-3) on the plain model; 1 epoch, then 2 more timed together.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ("adam", "default", "callback")


def run(name, data_dir, samples):
    import keras

    sys.path.insert(0, ROOT)
    import keras_sngd
    from keras_sngd.datasets import load_dataset
    from keras_sngd.models import paper_mlp

    images, labels = load_dataset("fashion_mnist", "train", data_dir=data_dir)
    images = images[:samples].reshape(-1, 784).astype("float32") / 255.0
    labels = labels[:samples]
    keras.utils.set_random_seed(0)
    model = paper_mlp(input_shape=(784,))
    if name != "adam":
        model = keras_sngd.reconstruct(model)
    optimizer = keras.optimizers.Adam(1e-3) if name == "adam" else keras.optimizers.SGD(0.1)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [keras_sngd.FunctionPreservingRefresh()] if name == "callback" else []
    start = time.perf_counter()
    first = model.fit(images, labels, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
    first_time = time.perf_counter() - start
    start = time.perf_counter()
    later = model.fit(images, labels, batch_size=64, epochs=2, verbose=0, callbacks=callbacks)
    later_time = (time.perf_counter() - start) / 2
    print(f"| {name} | {first_time:.2f} | {later_time:.2f} | {first.history['loss'][0]:.4f} | "
          f"{later.history['loss'][-1]:.4f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--run", choices=RUNS, help="one run, in this process")
    args = parser.parse_args()
    if args.run:
        run(args.run, args.data_dir, args.samples)
        return 0
    print(f"JAX backend, paper MLP, {args.samples} images, batch 64")
    print("| run | first epoch (s, compilation included) | later epochs (s/epoch) | epoch 1 loss | epoch 3 loss |")
    print("|---|---|---|---|---|")
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    for name in RUNS:
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--run", name, "--data-dir", args.data_dir,
             "--samples", str(args.samples)], capture_output=True, text=True, env=environment, check=False)
        rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
        if result.returncode != 0 or not rows:
            print(f"| {name} | failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'} |")
        else:
            print(rows[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
