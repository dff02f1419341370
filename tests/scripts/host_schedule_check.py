"""The host-side refresh schedule on the PyTorch backend (`keras_sngd.host_schedule`), run by
`tests/test_host_schedule.py` with `KERAS_BACKEND=torch`. Prints a JSON report as its last line.

1. The same training with the schedule decided on the host and on the device (`host_schedule.active`
   patched to False): the same losses, counters and state.
2. The synchronizations a LocalFisher makes on steps that neither check nor refresh: tensors read on the
   host (`Tensor.item`, `Tensor.__bool__`) and Python numbers copied to the device (`torch.as_tensor`),
   counted where the call comes from `keras_sngd`.
3. A counter written behind the layer's back (`layer.step.assign`, `load_weights`) is read again.
"""

import json
import os
import sys
import tempfile
import traceback

import keras
import numpy as np
import torch

import keras_sngd
from keras_sngd import host_schedule
from keras_sngd.local_fisher import LocalFisher


def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)  # 144 features
    x = keras.layers.Dense(300, activation="relu")(x)  # 300 wide: statistics every 4th batch
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(3)(x)
    return keras_sngd.reconstruct(
        keras.Model(inputs, outputs),
        local_fisher_arguments={"update_every": 5, "adaptive_statistics": True},
    )


def data():
    rng = np.random.default_rng(0)
    return rng.random((96, 8, 8, 1), "float32"), rng.integers(0, 3, 96)


def train(host, epochs=4):
    original = host_schedule.active
    if not host:
        host_schedule.active = lambda variable: False
    try:
        sngd = model()
        sngd.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = sngd.fit(*data(), batch_size=8, epochs=epochs, verbose=0)
    finally:
        host_schedule.active = original
    layers = [layer for layer in sngd._flatten_layers() if isinstance(layer, LocalFisher)]
    state = {}
    for index, layer in enumerate(layers):
        names = ["step", "refresh_count", "failed_refresh_count", "skipped_batch_count"]
        if layer.adaptive_statistics:
            names.append("statistics_period")
        # By position: the two models' layers have different automatic names.
        state[index] = {name: int(getattr(layer, name).numpy()) for name in names}
        state[index]["second_moment"] = layer.second_moment.numpy()
        state[index]["inverse_root"] = layer.inverse_root.numpy()
    return history.history["loss"], state, sngd


class SyncCounter:
    """Counts host synchronizations whose call stack passes through keras_sngd."""

    def __init__(self):
        self.count, self.sites = 0, {}
        self._patched = []

    def _from_package(self):
        stack = traceback.extract_stack()[:-3]
        for frame in reversed(stack):
            if os.sep + "keras_sngd" + os.sep in frame.filename:
                site = f"{os.path.basename(frame.filename)}:{frame.lineno} -> {os.path.basename(stack[-1].filename)}:{stack[-1].lineno}"
                self.sites[site] = self.sites.get(site, 0) + 1
                return True
        return False

    def __enter__(self):
        counter = self
        item, to_bool, as_tensor = torch.Tensor.item, torch.Tensor.__bool__, torch.as_tensor

        def counted_item(tensor):
            counter.count += counter._from_package()
            return item(tensor)

        def counted_bool(tensor):
            counter.count += counter._from_package()
            return to_bool(tensor)

        def counted_as_tensor(value, *args, **kwargs):
            if isinstance(value, (bool, int, float)):
                counter.count += counter._from_package()
            return as_tensor(value, *args, **kwargs)

        self._patched = [(torch.Tensor, "item", item), (torch.Tensor, "__bool__", to_bool), (torch, "as_tensor", as_tensor)]
        torch.Tensor.item, torch.Tensor.__bool__, torch.as_tensor = counted_item, counted_bool, counted_as_tensor
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._patched:
            setattr(owner, name, original)


def main():
    report = {"backend": keras.backend.backend()}
    host_losses, host_state, sngd = train(host=True)
    device_losses, device_state, _ = train(host=False)
    report["losses_host"], report["losses_device"] = host_losses, device_losses
    report["loss_difference"] = float(np.max(np.abs(np.subtract(host_losses, device_losses))))
    report["counters_host"] = {name: {k: v for k, v in s.items() if isinstance(v, int)} for name, s in host_state.items()}
    report["counters_device"] = {name: {k: v for k, v in s.items() if isinstance(v, int)}
                                 for name, s in device_state.items()}
    report["state_difference"] = max(
        float(np.max(np.abs(host_state[name][key] - device_state[name][key])))
        for name in host_state for key in ("second_moment", "inverse_root")
    )
    report["refreshes"] = sum(s["refresh_count"] for s in report["counters_host"].values())

    # Steps that neither check nor refresh: the step after a check step until the next one.
    layers = [layer for layer in sngd._flatten_layers() if isinstance(layer, LocalFisher)]
    x, y = data()
    to_check = -int(layers[0].step.numpy()) % 5  # batches to the next check step (a multiple of 5)
    if to_check:
        sngd.fit(x[: 8 * to_check], y[: 8 * to_check], batch_size=8, epochs=1, verbose=0)
    quiet = 4  # the steps after a check step and before the next
    with SyncCounter() as counter:
        sngd.fit(x[: 8 * quiet], y[: 8 * quiet], batch_size=8, epochs=1, verbose=0, shuffle=False)
    report["quiet_steps"] = quiet
    report["quiet_step_syncs"] = counter.count
    report["quiet_sync_sites"] = counter.sites
    report["steps_after_quiet"] = [int(layer.step.numpy()) for layer in layers]

    # Written behind the layer's back: the next step reads the new value.
    fisher = layers[-1]
    fisher.step.assign(9)  # the next step is 10: a check step for update_every=5
    checks_before = int(fisher.refresh_count.numpy()) + int(fisher.failed_refresh_count.numpy())
    fisher.second_moment.assign(fisher.second_moment.numpy() * 4.0)  # a drift, so that the check refreshes
    sngd.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    report["step_after_assign"] = int(fisher.step.numpy())
    report["refreshed_after_assign"] = (
        int(fisher.refresh_count.numpy()) + int(fisher.failed_refresh_count.numpy()) - checks_before
    )
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "w.weights.h5")
        fisher.step.assign(3)
        sngd.save_weights(path)
        fisher.step.assign(100)
        sngd.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)  # step 101
        sngd.load_weights(path)  # step 3 again
        sngd.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
        report["step_after_load"] = int(fisher.step.numpy())

    # Device scalars: made on the device once per value and dtype, no host copy.
    from keras_sngd.device_scalars import scalar

    with SyncCounter() as counter:
        half, again, flag = scalar(0.5), scalar(0.5), scalar(True, "bool")
    report["scalar"] = [float(half), str(half.dtype), str(flag.dtype), bool(flag)]
    report["scalar_reused"] = half is again
    report["scalar_syncs"] = counter.count
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
