"""How wide an input `reconstruct` whitens by default, and what a wide one costs.

A LocalFisher on `d` input features keeps two `(d, d)` float32 matrices, the running statistics `S` and
the inverse root `U` (with a low-rank `U` too: it stays the layer's dense, foldable form), and its refresh
works on `(d, d)` matrices: `O(d^2)` memory and `O(d^3)` (dense) or `O(d^2 r)` (low rank) arithmetic per
refresh, and its statistics write `d^2` numbers per update.

That is cheap for the widths of hidden layers and channels, and ruinous for a layer that reads a large
flattened feature map. `keras.applications.VGG16()` at its default 224x224 input feeds `fc1` the
`7 * 7 * 512 = 25088` features of its last block: two `(25088, 25088)` matrices take 5.0 GB. Measured
on the development machine (2 CPU cores, 24 GB, TensorFlow 2.21; `python benchmarks/wide_inputs.py
--variants plain,default,none`, batches of 4 images): with a LocalFisher before `fc1` too, the fit failed
at its first refresh (step 10) for want of memory for one more `(25088, 25088)` matrix. With `fc1` left
plain, `reconstruct` took 3.5 s, the process peaked at 4.5 GB (the plain model: 2.3 GB), and a step took
1.97 s against the plain model's 1.42 s (9.4 s for the first refresh's step). Preconditioners of this kind
cap the width they take on for the same reason (Shampoo's `max_preconditioner_dim`).

So `reconstruct(max_features=MAX_FEATURES)` leaves a layer whose input has more features than that
plain, says so in its report, and (where the LocalFishers have a trust region) puts a `StepBound` before
it, as before the convolutions it cannot whiten, so that its plain steps are bounded like the others'
(not inside a composite layer, before an attention layer, or before a recurrent layer whose state has a
LocalFisher, whose trust region already bounds the recurrent kernel: there the layer is only skipped).
At `MAX_FEATURES = 8192` the two matrices take 0.5 GB. `max_features=None` whitens every width, and
naming the layer in `per_layer_arguments` whitens that one; a LocalFisher built by hand on a wider input
warns (`warn_if_wide`). The K-FAC baseline's `keras_sngd.optimizers.prepare_kfac(max_features=...)` keeps
the same limit for its factors, which are dense square matrices too.
"""

import warnings

# The widest input (features on the LocalFisher's axis) `reconstruct` whitens by default.
MAX_FEATURES = 8192
# The (d, d) float32 matrices every LocalFisher keeps: the statistics S and the inverse root U.
SQUARE_STATES = 2


def square_state_bytes(dim):
    """The bytes of a LocalFisher's `(dim, dim)` float32 state (`S` and `U`)."""
    return SQUARE_STATES * 4 * int(dim) ** 2


def readable_bytes(count):
    """`count` bytes in kB, MB or GB, for messages."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 1e3:.1f} kB"


def check_max_features(max_features):
    """`max_features` (None, or an int >= 1), or a ValueError naming it."""
    if max_features is None:
        return None
    if isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 1:
        raise ValueError(
            f"`max_features` must be None (no limit) or an int >= 1, the widest input to whiten. "
            f"Received: max_features={max_features!r}"
        )
    return max_features


def too_wide_reason(features, max_features, layer_name):
    """The report's reason for leaving a layer with `features` input features plain, or None when
    `max_features` (None: no limit) allows it."""
    if max_features is None or features <= max_features:
        return None
    return (
        f"{features} input features, more than max_features={max_features}: a LocalFisher would keep "
        f"{readable_bytes(square_state_bytes(features))} of (d, d) state and refresh it at O(d^3) "
        f"(keras_sngd.width); pass max_features=None, or per_layer_arguments={{{layer_name!r}: {{}}}}, to "
        "whiten it anyway"
    )


def warn_if_wide(name, dim):
    """Warn when a LocalFisher is built on more than `MAX_FEATURES` features (built by hand, or through
    `reconstruct(max_features=...)` raised or named in `per_layer_arguments`)."""
    if dim > MAX_FEATURES:
        warnings.warn(
            f"LocalFisher '{name}' is built on {dim} features: its (d, d) statistics and U take "
            f"{readable_bytes(square_state_bytes(dim))} and each refresh costs O(d^3). Whitening inputs this wide "
            f"is rarely worth it (reconstruct leaves layers with more than {MAX_FEATURES} input features "
            "plain by default; keras_sngd.width).",
            stacklevel=3,
        )
