"""Train a small SNGD model on the backend in KERAS_BACKEND and check the layer's state against numpy;
then reconstruct a plain model, train it with `FunctionPreservingRefresh`, fold it, save and load it.

Run by tests/test_backends.py in a subprocess (a process has one Keras backend), also on PyTorch when it
is installed. Prints one JSON line.
"""

import json
import os
import sys
import tempfile

import keras
import numpy as np

import keras_sngd
from keras_sngd import LocalFisher
from keras_sngd import newton_schulz


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((128, 6)) + 0.5).astype("float32")
    targets = inputs @ rng.standard_normal((6, 2)).astype("float32")
    model = keras.Sequential(
        [keras.Input((6,)), LocalFisher(refresh_tolerance=0, update_every=4), keras.layers.Dense(8, activation="relu"),
         LocalFisher(refresh_tolerance=0, update_every=4), keras.layers.Dense(2)]
    )
    # On torch, jit_compile=True is torch.compile, which takes minutes on CPU for this step.
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=keras.backend.backend() != "torch")
    losses = model.fit(inputs, targets, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
    layer = model.layers[0]
    moment = np.asarray(layer.second_moment.numpy(), np.float64) / float(layer.statistics_weight.numpy())
    damped = moment + layer.damping * np.trace(moment) / 6 * np.eye(6)
    eigenvalues, vectors = np.linalg.eigh(damped)
    reference = (vectors / np.sqrt(eigenvalues)) @ vectors.T
    # The warm-started refresh keeps U U^T = G_d^-1 (U need not be symmetric): compare that.
    inverse_root_now = np.asarray(layer.inverse_root.numpy(), np.float64)
    inverse_fisher = reference @ reference
    error = np.linalg.norm(inverse_root_now @ inverse_root_now.T - inverse_fisher) / np.linalg.norm(inverse_fisher)

    _, inverse_root, residual = newton_schulz(damped.astype("float32"), return_residual=True)
    ns_error = np.linalg.norm(np.asarray(inverse_root) - reference) / np.linalg.norm(reference)
    float64_error = None
    try:
        newton_schulz(damped, dtype="float64")
    except ValueError as exception:
        float64_error = str(exception)
    report = reconstruct_fit_fold_save()
    print(json.dumps({
        **report,
        **refresh_precision(damped.astype("float32")),
        "backend": keras.backend.backend(),
        "losses": [float(loss) for loss in losses],
        "step": int(layer.step.numpy()),
        "refresh_count": int(layer.refresh_count.numpy()),
        "failed_refresh_count": int(layer.failed_refresh_count.numpy()),
        "layer_error": float(error),
        "newton_schulz_error": float(ns_error),
        "residual": float(residual),
        "float64_error": float64_error,
        "refresh_mode": str(layer.refresh_mode),
    }))


def refresh_precision(fisher):
    """On JAX, the matrix products of the layer's refresh and drift check, as traced: all full float32
    (`keras_sngd.compiled.shared`), so that TensorFloat-32 on a GPU cannot stall the Newton-Schulz residual."""
    if keras.backend.backend() != "jax":
        return {}
    import jax

    from keras_sngd import fisher_layer

    identity = np.eye(fisher.shape[0], dtype="float32")
    traced = str(jax.make_jaxpr(lambda g, u: fisher_layer._warm_refresh(g, u, 0.01).inverse_root)(fisher, identity))
    traced += str(jax.make_jaxpr(lambda g, u: fisher_layer._whitening_drift(g, u, 0.01))(fisher, identity))
    return {"refresh_products": traced.count("dot_general"), "refresh_highest_products": traced.count("precision=(Precision.HIGHEST, Precision.HIGHEST)")}


def reconstruct_fit_fold_save():
    """The user's path: reconstruct, fit through refreshes (no callback, also on JAX), fold, and a `.keras`
    round trip."""
    rng = np.random.default_rng(1)
    inputs = (rng.standard_normal((96, 12)) * rng.uniform(0.2, 3.0, 12) + 0.5).astype("float32")
    labels = rng.integers(0, 3, 96)
    keras.utils.set_random_seed(1)
    plain = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    sngd, report = keras_sngd.reconstruct(
        plain, local_fisher_arguments={"update_every": 4, "refresh_tolerance": 0.0}, return_report=True
    )
    same_at_start = float(np.abs(np.asarray(sngd.predict(inputs, verbose=0)) - np.asarray(plain.predict(inputs, verbose=0))).max())

    # Learning rate 0 through 3 refreshes: the function must not move.
    sngd.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = np.asarray(sngd.predict(inputs, verbose=0))
    sngd.fit(inputs, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    lr0_change = float(np.abs(np.asarray(sngd.predict(inputs, verbose=0)) - before).max() / np.abs(before).max())

    sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = sngd.fit(inputs, labels, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    outputs = np.asarray(sngd.predict(inputs, verbose=0))
    scale = np.abs(outputs).max()
    folded = keras_sngd.fold(sngd)
    fold_error = float(np.abs(np.asarray(folded.predict(inputs, verbose=0)) - outputs).max() / scale)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "sngd.keras")
        sngd.save(path)
        loaded = keras.saving.load_model(path)
    load_error = float(np.abs(np.asarray(loaded.predict(inputs, verbose=0)) - outputs).max() / scale)
    fishers = keras_sngd.callbacks.local_fishers(sngd)
    loaded_fishers = keras_sngd.callbacks.local_fishers(loaded)
    return {
        "inserted": len(report.inserted),
        "same_at_start": same_at_start,
        "lr0_change": lr0_change,
        "sngd_losses": [float(loss) for loss in losses],
        "sngd_refresh_counts": [int(layer.refresh_count.numpy()) for layer in fishers],
        "sngd_refresh_modes": [str(layer.refresh_mode) for layer in fishers],
        # reconstruct turns the batch-leverage scale on; 8-row batches of 12 and 16 features make it > 1.
        "sngd_leverage": [float(layer.leverage.numpy()) for layer in fishers],
        "loaded_leverage": [float(layer.leverage.numpy()) for layer in loaded_fishers],
        "fold_error": fold_error,
        "folded_has_local_fisher": bool(keras_sngd.callbacks.local_fishers(folded)),
        "load_error": load_error,
        "loaded_state_equal": all(
            np.array_equal(np.asarray(a.inverse_root.numpy()), np.asarray(b.inverse_root.numpy()))
            and int(a.step.numpy()) == int(b.step.numpy())
            for a, b in zip(fishers, loaded_fishers)
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
