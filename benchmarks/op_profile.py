"""Where a steady SNGD step's time goes, operation by operation (issue #7), from TensorFlow's profiler.

`benchmarks/overhead.py` times the parts of a LocalFisher by switching them off; this reads the kernels
themselves. For SGD and SNGD (`reconstruct`'s defaults, `SGD(0.1)`) on the paper MLP it warms up one epoch
of `--steps` batches of 64 real Fashion-MNIST images, profiles a second one
(`tf.profiler.experimental`), and prints the total self-time of the kernels by operation type and the
operations that take longest, with how many times each ran. Kernel time is not wall-clock time: the two
cores run independent kernels side by side, and the executor's own work between kernels does not show.

Needs the profile converter: `pip install xprof` (not a dependency of the package).

    python benchmarks/op_profile.py [--steps 200] [--top 25]
"""

import argparse
import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_sngd  # noqa: E402
from keras_sngd.datasets import load_dataset  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402


def profile(label, images, labels, directory):
    """The kernels' `(type, name, occurrences, self-time in microseconds)` of one profiled epoch."""
    import tensorflow as tf
    from xprof.convert import raw_to_tool_data

    keras.utils.set_random_seed(0)
    model = paper_mlp(input_shape=(784,))
    if label == "SNGD":
        model = keras_sngd.reconstruct(model)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    logdir = os.path.join(directory, label)
    tf.profiler.experimental.start(logdir)
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, _ = raw_to_tool_data.xspace_to_tool_data([path], "framework_op_stats", {})
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [column["id"] for column in table["cols"]]
    rows = [dict(zip(columns, [cell.get("v") for cell in row["c"]])) for row in table["rows"]]
    return [(row["type"], row["operation"], int(row["occurrences"]), row["total_self_time"])
            for row in rows if row["type"] != "IDLE"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    images, labels = load_dataset("fashion_mnist", "train")
    rows = 64 * args.steps
    images, labels = images[:rows].reshape(rows, 784).astype("float32") / 255.0, labels[:rows]
    print(f"paper MLP, {args.steps} steps of batch 64, keras {keras.__version__}, backend {keras.backend.backend()}")
    with tempfile.TemporaryDirectory() as directory:
        kernels = {label: profile(label, images, labels, directory) for label in ("SGD", "SNGD")}
    print("| kernel type | SGD ms | SGD runs per step | SNGD ms | SNGD runs per step |")
    print("|---|---|---|---|---|")
    by_type = {label: {} for label in kernels}
    for label, rows in kernels.items():
        for kind, _, occurrences, self_time in rows:
            total = by_type[label].setdefault(kind, [0.0, 0])
            total[0] += self_time
            total[1] += occurrences
    for kind in sorted(by_type["SNGD"], key=lambda kind: -by_type["SNGD"][kind][0]):
        sgd = by_type["SGD"].get(kind, [0.0, 0])
        sngd = by_type["SNGD"][kind]
        print(f"| {kind} | {sgd[0] / 1000:.1f} | {sgd[1] / args.steps:.1f} | {sngd[0] / 1000:.1f} | "
              f"{sngd[1] / args.steps:.1f} |")
    for label in kernels:
        print(f"{label}: kernels' total self-time {sum(row[3] for row in kernels[label]) / 1000:.1f} ms over "
              f"{args.steps} steps")
    print(f"\nSNGD's {args.top} longest operations")
    print("| ms | runs | type | operation |")
    print("|---|---|---|---|")
    for kind, name, occurrences, self_time in sorted(kernels["SNGD"], key=lambda row: -row[3])[:args.top]:
        print(f"| {self_time / 1000:.1f} | {occurrences} | {kind} | `{name[:110]}` |")


if __name__ == "__main__":
    main()
