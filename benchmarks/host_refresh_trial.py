"""A trial, not adopted: the drift check and the refresh run on the host when due (TensorFlow, issue #7).

The first `fit` of a reconstructed model in a new process costs about a second more than Adam's, and the
refresh is where that second goes (`benchmarks/first_fit_parts.py`: with no refresh in the step the first
fit is close to Adam's). The refresh is a conditional of the compiled train step, and TensorFlow traces
both branches of every conditional before the first step. The trial: the checking branch holds only a
`tf.py_function` that, when the branch runs, calls back into Python and runs the same drift check and
refresh eagerly there (the shared compiled functions of `keras_sngd.compiled`, the consumers'
re-expression, the counters), so that the step's graph holds none of it. The call takes the handles of
every variable the refresh reads or writes, so that TensorFlow orders it among the step's other uses of
them, and one process-wide variable's handle, so that two such calls never run at once (two at once held
both inter-op threads of a 2-core machine, each waiting for a compiled function no thread was left to run:
a deadlock, met in the test suite).

This prints, for the paper MLP in a new process per fit (12 batches of 64 real Fashion-MNIST images, the
first refresh at step 10, then a second fit of 12 batches), the first and second fit with the refresh in
the graph (the package) and on the host (this trial), in turn, medians of `--repeats`; and checks that
both give the same losses. Measured on the development machine (2 CPU cores, TensorFlow 2.21 CPU,
2026-12-01): see `benchmarks/results/host_refresh_trial.txt`.

Why it was not adopted (the same file): it saves up to 0.4 s on this 12-batch first fit, but a whole
fit (all of Fashion-MNIST, 5 epochs, the time issue #7's target measures) checks the drift hundreds of
times and refreshes dozens of times, and every host call costs more than the same work inside the
compiled step: the fit took 26.7 s with the drift check and the refresh on the host, 19.9 s with only
the refresh there, and 18.4 s with both in the graph (medians of 3, in turn, each in a new process).

    python benchmarks/host_refresh_trial.py [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fresh_process import run_fresh  # noqa: E402


def install_host_refresh():
    """Replace `FisherLayer._refresh_if_due` by the host-run version (the trial), in this process."""
    import keras
    import tensorflow as tf
    from keras import ops

    from keras_sngd import fisher_layer
    from keras_sngd.statistics import MovingMoments

    with tf.init_scope():
        order = tf.Variable(0, trainable=False, name="host_refresh_order")

    def refresh_if_due(self, check, moving, bindings, old_inverse_root, old_shift, old_root=(), rows=None):
        unchanged = (*self._unchanged(old_inverse_root, old_shift, old_root), ops.convert_to_tensor(False))
        batch_rows = rows() if rows is not None else ops.zeros((), "float32")
        variables = list(self.variables)
        for binding in bindings:
            variables.extend([binding.kernel] + ([binding.bias] if binding.bias is not None else []))
        handles = [variable.value.handle for variable in variables] + [order.handle]
        flat_like = keras.tree.flatten(unchanged)

        def on_host(second_moment, mean, weight, accepted, batch_rows_now, *_):
            moving_now = MovingMoments(second_moment, mean, weight, accepted)
            fisher = self._local_fisher(moving_now)
            if self.refresh_tolerance > 0 and int(self.refresh_count.numpy()) > 0:
                if float(self._drift(moving_now, fisher)) <= self.refresh_tolerance:
                    result = (*self._unchanged(self.inverse_root.value, self._current_shift(),
                                               self._current_root()), ops.convert_to_tensor(False))
                    return [tf.identity(value) for value in keras.tree.flatten(result)]
            result = self._refresh(moving_now, bindings, write=True, fisher=fisher,
                                   rows=None if rows is None else (lambda: batch_rows_now))
            self._count_refresh(result.accepted, due=True)
            return [tf.identity(value) for value in keras.tree.flatten((*result, ops.convert_to_tensor(True)))]

        def on_check():
            flat = tf.py_function(on_host, [*moving, batch_rows] + handles, Tout=[v.dtype for v in flat_like])
            for value, reference in zip(flat, flat_like):
                value.set_shape(reference.shape)
            return keras.tree.pack_sequence_as(unchanged, flat)

        return ops.cond(check, on_check, lambda: unchanged)

    fisher_layer.FisherLayer._refresh_if_due = refresh_if_due


def fits(on_host, batches=12):
    """`(first fit s, second fit s, first fit's loss, second fit's loss)` of a fresh reconstructed paper MLP."""
    import keras

    import keras_sngd
    from keras_sngd.datasets import load_dataset
    from keras_sngd.models import paper_mlp

    if on_host:
        install_host_refresh()
    images, labels = load_dataset("fashion_mnist", "train")
    rows = 64 * batches
    images, labels = images[:rows].reshape(rows, 784).astype("float32") / 255.0, labels[:rows]
    keras.utils.set_random_seed(0)
    model = keras_sngd.reconstruct(paper_mlp(input_shape=(784,)))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = []
    for _ in range(2):
        start = time.perf_counter()
        history = model.fit(images, labels, batch_size=64, epochs=1, verbose=0, shuffle=False)
        result.append((time.perf_counter() - start, history.history["loss"][0]))
    return result[0][0], result[1][0], result[0][1], result[1][1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    runs = {"refresh in the graph (the package)": False, "refresh on the host (the trial)": True}
    results = {label: [] for label in runs}
    for _ in range(args.repeats):  # in turn, so that a slow spell hits both alike
        for label, on_host in runs.items():
            results[label].append(run_fresh(fits, on_host))
    print(f"paper MLP, reconstruct + SGD(0.1), 12 batches of 64 per fit, each model in a new process, medians of "
          f"{args.repeats}")
    print("| refresh | first fit s: median (min-max) | second fit s | losses of the two fits |\n|---|---|---|---|")
    for label, values in results.items():
        first = [value[0] for value in values]
        print(f"| {label} | {statistics.median(first):.2f} ({min(first):.2f}-{max(first):.2f}) | "
              f"{statistics.median(value[1] for value in values):.2f} | {values[0][2]:.5f}, {values[0][3]:.5f} |")
    graph, host = (results[label][0][2:] for label in runs)
    print(f"same losses: {graph == host}")


if __name__ == "__main__":
    main()
