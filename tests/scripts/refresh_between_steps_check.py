"""SNGD with `keras_sngd.callbacks.FunctionPreservingRefresh` on the backend in KERAS_BACKEND.

Run by tests/test_jax_function_preserving.py in a subprocess (a process has one Keras backend), with the
cases as arguments, in order; prints one JSON line, a report per case.

- `lr0`: SGD(0.0) through 3 refreshes (`update_every=4`): the outputs before and after `fit`.
- `lr0_center`: the same with `center=True` (the consumers' biases absorb the shift).
- `lr0_steps_per_execution`: the same with `steps_per_execution=3` (refreshes due inside an execution).
- `trajectory`: SGD(0.05) for 3 epochs from weights drawn with numpy (the same on every backend):
  losses, final weights and `U`.
- `mlp DIRECTORY`: the 784-80-80-10 MLP, LocalFisher defaults, SGD(0.1), 2 epochs of 200 steps of 50 real
  Fashion-MNIST images: the losses. `mlp_plain DIRECTORY`: the same without LocalFisher (plain SGD).
- `trajectory_everywhere`: `trajectory` with the callback's mechanism also off JAX (refresh between steps).
- `lr0_no_callback`, `lr0_center_no_callback`, `trajectory_no_callback`, `mlp_no_callback`: the same
  cases without the callback (on JAX the consumers' updates then go through the optimizer,
  `keras_sngd.handoff`), with the LocalFisher warnings raised.
- `user_constraint`: a consumer with `kernel_constraint=NonNeg()` through 3 refreshes.
- `trust_region`: one SGD step at a huge learning rate on a reconstructed CNN (`max_step` set by
  `reconstruct`), after a save/load round trip, and on hand-inserted layers with and without
  `prepare_handoff()`: each consumer's relative step on `(W', b)`.
"""

import json
import sys
import warnings

import keras
import numpy as np

import keras_sngd
from keras_sngd import LocalFisher
from keras_sngd.handoff import is_carrier


def small_model(update_every=4, center=False):
    model = keras.Sequential([
        keras.Input((6,)),
        LocalFisher(refresh_tolerance=0, update_every=update_every, center=center),
        keras.layers.Dense(8, activation="tanh"),
        LocalFisher(refresh_tolerance=0, update_every=update_every, center=center),
        keras.layers.Dense(2),
    ])
    rng = np.random.default_rng(1)
    model.set_weights([
        (rng.standard_normal(w.shape) * (0.5 if len(w.shape) == 2 and w.shape[0] == w.shape[1] else 1.0)).astype("float32")
        if not _is_state(model, i) else w
        for i, w in enumerate(model.get_weights())
    ])
    return model


def _is_state(model, index):
    """Whether weight number `index` of `model.get_weights()` is LocalFisher state (kept as initialized)."""
    owners = [layer for layer in model.layers for _ in layer.weights]
    return isinstance(owners[index], LocalFisher)


def data():
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((96, 6)) * rng.uniform(0.2, 3.0, 6) + 0.7).astype("float32")
    targets = np.tanh(inputs @ rng.standard_normal((6, 2))).astype("float32")
    return inputs, targets


def lr0(callbacks, steps_per_execution=1, center=False):
    inputs, targets = data()
    model = small_model(center=center)
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=steps_per_execution)
    before = np.asarray(model.predict(inputs, verbose=0))
    # The conditionals traced into the train step (each one a host round trip on a GPU for XLA).
    traced_conditionals = []
    cond = keras.ops.cond
    keras.ops.cond = lambda *args, **kwargs: traced_conditionals.append(1) or cond(*args, **kwargs)
    try:
        model.fit(inputs, targets, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    finally:
        keras.ops.cond = cond
    after = np.asarray(model.predict(inputs, verbose=0))
    fisher = model.layers[0]
    return {
        "refresh_count": int(fisher.refresh_count.numpy()),
        "failed_refresh_count": int(fisher.failed_refresh_count.numpy()),
        "step": int(fisher.step.numpy()),
        "inverse_root_is_identity": bool(np.allclose(fisher.inverse_root.numpy(), np.eye(6))),
        "max_output_change": float(np.abs(after - before).max()),
        "max_output": float(np.abs(before).max()),
        "refresh_mode": str(fisher.refresh_mode),
        "traced_conditionals": len(traced_conditionals),
    }


class RefreshBetweenStepsEverywhere(keras_sngd.callbacks.FunctionPreservingRefresh):
    """The JAX mechanism on any backend, to compare backends with the refresh at the same point."""

    active = True


def relative_steps(model, inputs, targets):
    """One training step: for each layer fed by a LocalFisher, ||step on (W', b)|| / ||(W', b)||."""
    consumers = [layer for layer in model.layers if layer.weights and not isinstance(layer, LocalFisher)
                 and isinstance(model.layers[model.layers.index(layer) - 1], LocalFisher)]
    before = [[np.array(v.numpy()) for v in layer.trainable_weights] for layer in consumers]
    model.train_on_batch(inputs, targets)
    after = [[np.array(v.numpy()) for v in layer.trainable_weights] for layer in consumers]
    return [
        float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(new, old))) / np.sqrt(sum(np.sum(b ** 2) for b in old)))
        for new, old in zip(after, before)
    ]


def trust_region(directory):
    import os

    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (32, 12, 12, 1)).astype("float32")
    targets = rng.integers(0, 4, 32)

    def compiled(model):
        model.compile(keras.optimizers.SGD(50.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    keras.utils.set_random_seed(0)
    plain = keras.Sequential([
        keras.Input((12, 12, 1)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    report = {}
    model = compiled(keras_sngd.reconstruct(plain))
    report["max_step"] = [layer.max_step for layer in model.layers if isinstance(layer, LocalFisher)]
    report["reconstructed"] = relative_steps(model, inputs, targets)
    path = os.path.join(directory, "model.keras")
    model.save(path)
    loaded = compiled(keras.saving.load_model(path))
    report["loaded"] = relative_steps(loaded, inputs, targets)
    report["loaded_weight_count"] = len(loaded.layers[0].weights)
    unbounded = compiled(keras_sngd.reconstruct(plain, local_fisher_arguments={"max_step": None}))
    report["unbounded"] = relative_steps(unbounded, inputs, targets)

    def by_hand():
        keras.utils.set_random_seed(0)
        return compiled(keras.Sequential([
            keras.Input((12, 12, 1)), LocalFisher(max_step=0.05), keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(), LocalFisher(max_step=0.05), keras.layers.Dense(4),
        ]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report["by_hand_unprepared"] = relative_steps(by_hand(), inputs, targets)
    report["by_hand_warnings"] = [str(w.message) for w in caught if "LocalFisher" in str(w.message)]
    prepared = by_hand()
    for layer in prepared.layers:
        if isinstance(layer, LocalFisher):
            layer.prepare_handoff()
    report["by_hand_prepared"] = relative_steps(prepared, inputs, targets)
    return report


def user_constraint():
    """A consumer with its own kernel constraint (NonNeg): the handoff keeps it, applied last."""
    inputs, targets = data()
    model = keras.Sequential([
        keras.Input((6,)), LocalFisher(refresh_tolerance=0, update_every=4),
        keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg()),
    ])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(inputs, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
    constraint = model.layers[1].kernel.constraint
    return {
        "constraint": type(constraint).__name__,
        "kept": type(getattr(constraint, "previous", constraint)).__name__,
        "min_kernel": float(np.min(model.layers[1].kernel.numpy())),
        "refresh_count": int(model.layers[0].refresh_count.numpy()),
    }


def run(case, argument=None):
    callbacks = [keras_sngd.callbacks.FunctionPreservingRefresh()]
    if case.endswith("_no_callback"):
        case, callbacks = case[: -len("_no_callback")], []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = _run(case, argument, callbacks)
        report["warnings"] = [str(w.message) for w in caught if "LocalFisher" in str(w.message)]
        return report
    if case == "trust_region":
        return trust_region(argument)
    if case == "user_constraint":
        return user_constraint()
    return _run(case, argument, callbacks)


def _run(case, argument, callbacks):
    if case == "lr0":
        return lr0(callbacks)
    if case == "lr0_center":
        return lr0(callbacks, center=True)
    if case == "lr0_steps_per_execution":
        return lr0(callbacks, steps_per_execution=3)
    if case in ("trajectory", "trajectory_everywhere"):
        if case == "trajectory_everywhere":
            callbacks = [RefreshBetweenStepsEverywhere()]
        inputs, targets = data()
        model = small_model()
        model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(inputs, targets, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
        return {
            "losses": history.history["loss"],
            # Without the carriers JAX adds (`keras_sngd.handoff`): the same list on every backend.
            "weights": [np.asarray(v.numpy()).tolist() for v in model.weights if not is_carrier(v)],
            "refresh_count": int(model.layers[0].refresh_count.numpy()),
        }
    if case in ("mlp", "mlp_plain"):
        from keras_sngd.datasets import load_dataset

        images, labels = load_dataset("fashion_mnist", "train", data_dir=argument)
        images = images[:10000].reshape(10000, 784).astype("float32") / 255.0
        keras.utils.set_random_seed(0)
        fisher = (lambda: LocalFisher()) if case == "mlp" else (lambda: keras.layers.Identity())
        model = keras.Sequential([
            keras.Input((784,)), fisher(), keras.layers.Dense(80, activation="relu"),
            fisher(), keras.layers.Dense(80, activation="relu"), fisher(), keras.layers.Dense(10),
        ])
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(images, labels[:10000], batch_size=50, epochs=2, shuffle=False, verbose=0,
                            callbacks=callbacks)
        return {
            "losses": history.history["loss"],
            "refresh_counts": [int(layer.refresh_count.numpy()) for layer in model.layers if isinstance(layer, LocalFisher)],
            "step": int(model.layers[0].step.numpy()) if case == "mlp" else None,
        }
    raise ValueError(f"unknown case {case!r}")


def main():
    report = {"backend": keras.backend.backend()}
    arguments = sys.argv[1:]
    while arguments:
        case = arguments.pop(0)
        argument = arguments.pop(0) if case.startswith("mlp") or case == "trust_region" else None
        report[case] = run(case, argument)
    if keras.backend.backend() == "jax":
        # The refreshes between steps ran as compiled programs (`keras_sngd.compiled`), one per signature.
        from keras_sngd import fisher_layer

        report["jitted_refresh_programs"] = {
            name: len(getattr(fisher_layer, name).programs) for name in ("_warm_refresh", "_whitening_drift")
        }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
