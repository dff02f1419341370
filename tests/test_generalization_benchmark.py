"""`benchmarks/generalization.py`: its run labels, and one tiny run on real data."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.generalization import parse_run  # noqa: E402
from keras_sngd.models import paper_mlp  # noqa: E402


def test_run_labels():
    model = paper_mlp()
    optimizer, arguments, prepare, average = parse_run("Muon 0.003")
    assert type(optimizer()).__name__ == "Muon" and arguments is None and prepare is None and not average
    optimizer, arguments, _, _ = parse_run("SNGD 0.1 wd 0.001")
    assert optimizer().weight_decay == pytest.approx(0.001) and arguments(model) == {}
    # `cosine`: the rate decays to 0 over the steps the run passes; K-FAC prepares its own model.
    decaying = parse_run("SNGD 0.2 cosine").optimizer(decay_steps=100)
    assert float(decaying.learning_rate) == pytest.approx(0.2)
    decaying.iterations.assign(100)
    assert float(decaying.learning_rate) == pytest.approx(0.0, abs=1e-7)
    assert float(parse_run("SNGD 0.2").optimizer(decay_steps=100).learning_rate) == pytest.approx(0.2)
    kfac = parse_run("K-FAC 0.1")
    assert type(kfac.optimizer()).__name__ == "KFAC" and kfac.reconstruct_arguments is None
    assert kfac.prepare(paper_mlp()) is not None
    assert parse_run("SNGD 0.1 damping 0.3")[1](model) == {"local_fisher_arguments": {"damping": 0.3}}
    assert parse_run("SNGD 0.1 update_every 10")[1](model) == {"local_fisher_arguments": {"update_every": 10}}
    # Only the layer on the raw pixels reads fixed features; `none` gives it the network's damping.
    assert parse_run("SNGD 0.1 fixed-feature damping 3")[1](model) == {"per_layer_arguments": {"dense_1": {"damping": 3.0}}}
    assert parse_run("SNGD 0.1 fixed-feature damping none")[1](model) == {"local_fisher_arguments": {"damping": 0.01}}
    # Any layer type reading fixed features (how the rule was measured before an LSTM).
    from keras_sngd.models import lstm_rows

    assert parse_run("SNGD 0.3 fixed-feature damping 1")[1](lstm_rows()) == {"per_layer_arguments": {"lstm": {"damping": 1.0}}}
    assert parse_run("SNGD 0.3 fixed-feature damping none")[1](lstm_rows()) == {"local_fisher_arguments": {"damping": 0.1}}
    # SNGD options combine, in any order.
    combined = parse_run("SNGD 0.01 momentum 0.9 nesterov wd 0.001 update_every 20 fixed-feature damping 3")
    sgd = combined.optimizer()
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (pytest.approx(0.9), True, pytest.approx(0.001))
    assert combined.reconstruct_arguments(model) == {"local_fisher_arguments": {"update_every": 20},
                                                     "per_layer_arguments": {"dense_1": {"damping": 3.0}}}
    assert parse_run("SNGD 0.1 damping 0.3 fixed-feature damping none")[1](model) == {
        "local_fisher_arguments": {"damping": 0.3}}
    # The reconstruction trained with Keras's Muon instead of SGD.
    muon = parse_run("SNGD 0.0003 muon damping 0.3")
    assert type(muon.optimizer()).__name__ == "Muon" and float(muon.optimizer().learning_rate) == pytest.approx(3e-4)
    assert muon.reconstruct_arguments(model) == {"local_fisher_arguments": {"damping": 0.3}}
    # Centering, and layers left without a LocalFisher.
    assert parse_run("SNGD 0.1 center 1 exclude logits exclude dense_2")[1](model) == {
        "local_fisher_arguments": {"center": True}, "exclude": ("logits", "dense_2")}
    # Weight averages: Keras's `use_ema` for the baselines, the host average of the effective weights for SNGD.
    assert parse_run("Muon 0.001 ema").optimizer().use_ema and not parse_run("Muon 0.001").optimizer().use_ema
    assert parse_run("Adam 0.003 ema cosine").optimizer(decay_steps=10).use_ema
    averaged = parse_run("SNGD 0.1 average")
    assert averaged.average and not averaged.optimizer().use_ema and averaged.reconstruct_arguments(model) == {}
    for bad in ["SNGD 0.1 center yes", "SNGD 0.1 exclude", "SNGD 0.1 muon momentum 0.9", "SNGD", "Adam fast", "RMSprop 0.1", "SNGD 0.1 momentum", "SNGD 0.1 nesterov", "SNGD 0.1 wd x",
                "SNGD 0.1 fixed-feature rank 3", "SNGD 0.1 speed 2", "Adam 0.1 wd 0.1", "cosine", "K-FAC 0.1 wd 1",
                "Adam 0.001 average", "SNGD 0.1 ema average"]:
        with pytest.raises(ValueError, match="Bad run"):
            parse_run(bad)


def test_a_tiny_run_prints_its_table(fashion_mnist_directory):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "generalization.py"), "--samples", "512", "--epochs", "1",
         "--seeds", "0", "--runs", "Adam 0.001,SNGD 0.1 fixed-feature damping none"],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(ROOT),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| Adam", "| SNGD"))]
    assert len(rows) == 2
    for row in rows:
        accuracy = float(row.split("|")[2])
        assert 0.3 < accuracy <= 1.0  # one epoch on 512 images: well above chance (0.1)


def test_the_average_of_the_effective_weights_is_the_model_at_momentum_0_and_an_average_otherwise():
    # `EffectiveAverage` (the `average` runs): through refreshes, the folded average at momentum 0 is the
    # trained model itself, and at momentum 0.9 the average of the effective weights `U W'` step by step.
    import keras
    import numpy as np

    import keras_sngd
    from benchmarks.generalization import EffectiveAverage

    def trained(momentum):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((12,))
        hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
        model = keras_sngd.reconstruct(keras.Model(inputs, keras.layers.Dense(3, name="out")(hidden)),
                                       local_fisher_arguments={"update_every": 2, "refresh_tolerance": 0.0})
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(64, 12)).astype("float32"), rng.integers(0, 3, 64)
        average = EffectiveAverage(momentum)
        folded_each_step = []
        record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: folded_each_step.append(
            keras_sngd.fold(model).get_layer("hidden").kernel.numpy()))
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[average, record])
        return model, average, folded_each_step, x

    model, average, _, x = trained(0.0)
    assert min(int(fisher.refresh_count.numpy()) for fisher, _ in average.pairs) >= 3
    assert len(average.pairs) == 2
    np.testing.assert_allclose(average.folded().predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    _, average, kernels, _ = trained(0.9)
    expected = kernels[0]
    for kernel in kernels[1:]:
        expected = 0.9 * expected + 0.1 * kernel
    np.testing.assert_allclose(average.folded().get_layer("hidden").kernel.numpy(), expected, atol=1e-5)
