"""The LocalFisher arguments `reconstruct` chooses by itself: for convolutional and recurrent networks, for
deep networks without normalization, and for the layers that read fixed features.

Measured on real Fashion-MNIST (`benchmarks/stability_trace.py`, `benchmarks/stability_sweep.py`, see
docs/stability.md): with the LocalFisher defaults, SNGD on a CNN trains like plain SGD until the first
refresh and then, within a few steps, the whitened gradient of every layer, the Dense head included, grows
geometrically until the loss is not finite, at every learning rate from 0.3 down to 0.01. Two causes,
each needed for stability:

- **Near-null input directions.** Without BatchNormalization the inputs of deeper layers have small and
  very uneven variance (ReLU channels that are nearly dead or constant); damping relative to the mean
  eigenvalue at 0.01 lets `U` amplify those directions up to `sqrt(d / 0.01)` times the mean, so
  effective weights `W = U W'` there are huge, and when an earlier layer's update moves its output into
  them the next layer's output jumps. Stronger damping bounds that amplification.
- **Unbounded steps.** In whitened coordinates the size of a step is its effect on the function
  (`keras_sngd.trust_region`); SNGD's scalar output side (the paper's `E(v_f)`) does not follow the
  layer's real curvature, so a fixed learning rate is too large for some layers at some times. A trust
  region (`max_step`) bounds each step relative to the layer's size, as K-FAC clips its updates; a bound
  in absolute units was not enough, because small inputs (deep ReLU layers without normalization) are
  whitened by a large `U`, which turns a small absolute change upstream into a large relative one.

Every network gets the drift check every `UPDATE_EVERY` = 10 steps instead of the layer's 50. On the
paper's MLP (20,000 Fashion-MNIST images, batch 64, SGD 0.1, 5 epochs) it ended at a training loss of
0.124 instead of 0.163, with 17 instead of 10 refreshes of the busiest layer and no measurable change
of the epoch time (`python benchmarks/refresh_schedule.py --configs 50,25,10,5 --batch-size 64
--epochs 5`), and the same test accuracy on all of Fashion-MNIST (0.878 ± 0.004 against 0.879 ± 0.004,
3 seeds, `python benchmarks/generalization.py --runs "SNGD 0.1,SNGD 0.1 update_every 10"`). It is safe
with the trust region and the damping before raw pixels that `reconstruct` also sets; a layer inserted
by hand keeps 50 (see `LocalFisher`).

A network with only Dense (and EinsumDense) layers keeps the LocalFisher defaults' damping, which was
measured on the paper's MLP, and gets the trust region (without it the MLP diverged at learning rate
0.3; with `max_step=0.05` it trains there, and at 0.1 the bound never binds: the same losses to four
digits). In a network with any convolution or recurrent layer, every inserted LocalFisher gets
`STABLE_ARGUMENTS` (they had the 10-step check first, so that natural-gradient steps start sooner),
since the blow-up is one mode coupling all layers, the Dense head included; so does a network with an
attention layer or a composite layer whitened inside (a transformer: at damping 0.01 it trained badly
at large learning rates, `needs_stable_arguments`). In deep
networks without normalization the radius falls with depth (`trust_radius`). The LocalFisher before a
Dense layer that reads fixed features (raw data, a frozen backbone's output) gets `damping` 1.0, for test
accuracy (`fixed_feature_damping`, docs/generalization.md), and, from 256 features, statistics whose
period follows need (`fixed_feature_statistics`); the one before any other Dense layer at least
its width / 8000, so that wide hidden layers keep the paper MLP's bound on how far `U` amplifies
near-null directions (`width_damping`).
"""

import inspect

import keras

from keras_sngd.binding import ATTENTION_TYPES
from keras_sngd.binding import layer_family


# `update_every` of every LocalFisher `reconstruct` inserts (the layer's own default is 50).
UPDATE_EVERY = 10
STABLE_ARGUMENTS = {"damping": 0.1, "max_step": 0.05, "update_every": UPDATE_EVERY}
# `damping` of a LocalFisher that reads fixed features (`fixed_feature_damping`).
FIXED_FEATURE_DAMPING = 1.0
# Fixed features from which `reconstruct` passes `adaptive_statistics=True` (`fixed_feature_statistics`):
# where `statistics_every="auto"` takes every 4th batch (keras_sngd.fisher_layer).
WIDE_FIXED_FEATURES = 256
# Features per unit of damping before a Dense layer (`width_damping`): the paper MLP's 80 at damping 0.01.
FEATURES_PER_DAMPING = 8000
# Dense layers and the attention layers whose query, key and value projections are EinsumDense layers.
_DENSE_LIKE = (keras.layers.Dense, keras.layers.EinsumDense) + ATTENTION_TYPES
_NORMALIZATIONS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
)
# Up to this many parameterized layers, an unnormalized network keeps `max_step` 0.05 (measured on
# plain_cnn, 5 layers); beyond it the radius falls with the square of the depth (docs/stability.md).
_SHALLOW = 5


def _layers(model):
    """Every layer of `model`, of the models nested in it, and inside its composite layers (a KerasHub
    `TransformerEncoder`, a user's block: layers of an unsupported type, whose inner layers
    `keras_sngd.inner_whitening.InnerWhitening` whitens)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer
            if layer_family(layer) is None:
                yield from layer._flatten_layers(include_self=False)


def feeds_normalization(layer):
    """Whether every call of `layer` recorded in a graph feeds only normalization layers (BatchNormalization,
    LayerNormalization, GroupNormalization, UnitNormalization), and there is at least one.

    Such a layer's output is normalized before anything else reads it, so the scale of its weights does not
    change what the network computes: a large step grows their norm, which shrinks the effect of the next
    steps, and its steps cannot compound down the network. `reconstruct` gives a `StepBound` only to layers
    SNGD cannot whiten that do not feed one (`keras_sngd.step_bound`): on MobileNetV2 (alpha 0.35, every
    depthwise convolution followed by BatchNormalization; 4,096 Fashion-MNIST images padded to 32x32x3,
    batch 64, 2 epochs, one seed) bounding the depthwise steps raised the final loss from 0.736 to 0.817 at
    lr 0.1 and from 0.769 to 0.924 at 0.3, while on a CNN whose depthwise and separable convolutions feed
    whitened layers directly it is what lets SNGD train at all at 0.3 and 0.1
    (`python benchmarks/architectures.py --models separable_cnn,mobilenet_v2`).
    """
    consumers = [node.operation for node in layer._outbound_nodes]
    return bool(consumers) and all(isinstance(consumer, _NORMALIZATIONS) for consumer in consumers)


def unnormalized_depth(model):
    """The number of parameterized layers (convolutions, recurrent, Dense, EinsumDense) of a network with
    no normalization layer (BatchNormalization, LayerNormalization, GroupNormalization,
    UnitNormalization), searched recursively; 0 for a network with one."""
    layers = list(_layers(model))
    if any(isinstance(layer, _NORMALIZATIONS) for layer in layers):
        return 0
    return sum(layer_family(layer) is not None for layer in layers)


def trust_radius(model):
    """`max_step` for the LocalFishers `reconstruct` inserts into `model`.

    ```
    max_step = 0.05 * min(1, (5 / L)^2),   L = unnormalized_depth(model)
    ```

    Each layer's step is bounded relative to the layer, but in a deep network without normalization the
    relative changes of its layers compound: each layer's output moves along the back-propagated gradient,
    which points into the directions where the next layer's effective kernel `W = U W'` is large (its
    input's low-variance directions, which `U` amplifies), so the next layer's output moves by more, and so
    on down the chain. Keras's VGG16 (16 parameterized layers, no normalization) diverged at learning rate
    0.3 with a radius of 0.05 and of 0.0156 (5 / L) and trained with 0.005; a plain 16-layer CNN jumped to an
    epoch loss of 68 with 0.05 and trained with 0.0156 and 0.005; `plain_cnn` (5 layers) trains with 0.05
    (`benchmarks/deep_plain.py`, docs/stability.md section 5). Normalization layers reset the scale between
    layers, so networks with them keep 0.05.
    """
    depth = unnormalized_depth(model)
    return STABLE_ARGUMENTS["max_step"] * min(1.0, (_SHALLOW / max(depth, 1)) ** 2)


def needs_stable_arguments(model):
    """Whether `model` (searched recursively, composite layers included) has a convolution, a recurrent
    layer, an attention layer or a composite layer whose inner layers `reconstruct` whitens (a KerasHub
    transformer layer, a user's block: `keras_sngd.inner_whitening`).

    Attention and transformer layers: with the Dense networks' damping (0.01 relative to the mean
    eigenvalue) SNGD trained transformers well at small learning rates and poorly at large ones, and with
    0.1 the other way round, by less (`python benchmarks/architectures.py --models
    transformer_rows,keras_hub_transformer_rows`, 8,192 Fashion-MNIST images, 3 epochs, seeds 0 and 1;
    `benchmarks/results/architectures/`): on the KerasHub encoders, damping 0.01 gave 0.629 / 0.683 /
    0.440 / 0.467 at lr 0.3 / 0.1 / 0.03 / 0.01 and 0.1 gave 0.461 / 0.441 / 0.456 / 0.513 (Adam's best
    0.489), the same best loss with no learning rate far off it.
    """
    for layer in _layers(model):
        if layer_family(layer) in ("convolution", "recurrent") or isinstance(layer, ATTENTION_TYPES):
            return True
        if not isinstance(layer, keras.Model) and _whitened_inside(layer):
            return True
    return False


def _whitened_inside(layer):
    from keras_sngd.inner_whitening import InnerWhitening
    from keras_sngd.inner_whitening import is_composite

    return isinstance(layer, InnerWhitening) or is_composite(layer)


def default_arguments(model, layer_class=None):
    """The LocalFisher arguments `reconstruct` uses under the user's for every layer of `model`.

    Every network gets the drift check every `UPDATE_EVERY` steps, the trust region,
    `max_step=trust_radius(model)`, the batch-leverage scale (`leverage_scaling=True`,
    `keras_sngd.leverage`), and `rank="auto"` (a low-rank `U` before Dense layers with at least 256
    input features and damping of at least 0.1: `keras_sngd.low_rank.resolve_rank`); a network with a
    convolution, a recurrent layer, an attention layer or a composite layer (`needs_stable_arguments`)
    also gets `STABLE_ARGUMENTS`' damping. With `layer_class` (what
    `reconstruct` inserts), only the arguments its constructor takes: the statistics-only
    `FisherStatistics` of the NGD baseline has no trust region (`max_step`).
    """
    arguments = dict(STABLE_ARGUMENTS) if needs_stable_arguments(model) else {}
    arguments["update_every"] = UPDATE_EVERY
    arguments["max_step"] = trust_radius(model)
    # A low-rank U before wide Dense inputs whose damping flattens the floor of the spectrum
    # (`keras_sngd.low_rank.resolve_rank`; each layer decides from its input and damping).
    arguments["rank"] = "auto"
    # The batch-leverage scale (`keras_sngd.leverage`): wide Dense inputs at small batches or large
    # learning rates; 1 wherever the batch has at least as many rows as effective features.
    arguments["leverage_scaling"] = True
    if layer_class is not None:
        accepted = {parameter.name for parameter in constructor_parameters(layer_class)}
        arguments = {key: value for key, value in arguments.items() if key in accepted}
    return arguments


def constructor_parameters(layer_class):
    """The parameters of the constructors of `layer_class` and its bases up to Keras's `Layer`, a
    subclass's first."""
    for klass in inspect.getmro(layer_class):
        if klass is keras.layers.Layer:
            break
        yield from inspect.signature(klass.__init__).parameters.values()


def fixed_feature_damping(layer, damping, features):
    """The `damping` `reconstruct` gives the LocalFisher before `layer` when its input is fixed features.

    ```
    damping = max(damping, FIXED_FEATURE_DAMPING)   # FIXED_FEATURE_DAMPING = 1.0
    ```

    for a Dense or EinsumDense `layer` reading at least 2 features; `damping` unchanged otherwise.

    Fixed features are what no trained layer produces: the raw or preprocessed inputs, or a frozen
    backbone's output (`keras_sngd.graph.reads_fixed_features`). Their second moments are a property of the
    data, and whitening them fully erases it: gradient descent on whitened inputs sees every direction of
    the data alike, the low-variance ones (noise, pixels at the border) as much as the directions that carry
    the signal, and fits them (Wadia et al., "Whitening and second order optimization both make information
    in the dataset unusable during training, and can reduce or prevent generalization", ICML 2021). With
    damping 1.0 relative to the mean eigenvalue, `G_d = G + mean(eig G) * I` still whitens the few directions
    whose variance is far above the mean, which are what slows plain SGD, and treats the rest alike, as
    plain SGD does.

    Measured with `benchmarks/generalization.py` (full Fashion-MNIST, batch 64, 5 epochs, SGD lr 0.1, 3
    seeds; docs/generalization.md): on the paper's MLP SNGD's test accuracy rose from 0.857 ± 0.001 to
    0.879 ± 0.003 (Adam 0.870, Muon 0.887 at lr 1e-3 and 0.879 at 3e-3), its training loss from 0.119 to
    0.170 (Adam 0.300, Muon 0.194 to 0.196). Stronger damping on the hidden layers' inputs too, which are
    what training moves, gave less (0.876 with damping 0.3 or 1.0 everywhere). Before an LSTM reading the
    28 pixels of each image row the same damping raised the training loss after 3 epochs from 0.507 to
    0.551 and did not raise the test accuracy (0.804 ± 0.005 against 0.799 ± 0.015; lr 0.3, 8,192 images,
    3 seeds), so recurrent layers keep the network's damping, and so do convolutions, whose input channels (1 for Fashion-MNIST, 3 for RGB) were not
    measured; one feature has no structure to erase anyway, and damping it would only rescale the step.
    """
    if features < 2 or not isinstance(layer, _DENSE_LIKE):
        return damping
    return max(damping, FIXED_FEATURE_DAMPING)


def fixed_feature_statistics(layer, features):
    """Whether `reconstruct` gives the LocalFisher before `layer` `adaptive_statistics=True`: a Dense or
    EinsumDense `layer` reading at least `WIDE_FIXED_FEATURES` (256) fixed features.

    Fixed features' statistics depend on the data alone: once `U` whitens them, the drift checks find no
    drift and the adaptive period lets the statistics' `(d, d)` product run every 64th step instead of every
    4th (`statistics_every="auto"`'s period there), and the check itself every 64th; a change of the data
    still shows within two periods. On the paper's MLP (784 pixels) that is a fifth of SNGD's steady epoch
    (1.02 s against 1.27 s, SGD 0.62 s; 20,000 images, batch 50; `python benchmarks/overhead.py`,
    `benchmarks/results/overhead_adaptive_statistics.txt`), with the same losses to four digits, since
    that layer's `U` is refreshed once and its statistics only feed the drift check. Not for inputs that
    training moves: before the 512-wide hidden layers of a 784-512-512-512-10 MLP the adaptive period cost
    4% to 16% more training loss after 2 epochs (`python benchmarks/wide_mlp.py --variants
    reconstruct,adaptive-everywhere`), because their statistics then followed the network more slowly. Narrower inputs (and convolutions, recurrent
    layers) take every batch, where the product is cheap, and keep it.
    """
    return isinstance(layer, _DENSE_LIKE) and features >= WIDE_FIXED_FEATURES


def width_damping(layer, damping, features):
    """The `damping` `reconstruct` gives the LocalFisher before a Dense or EinsumDense `layer` with
    `features` input features that are not fixed features.

    ```
    damping = max(damping, features / FEATURES_PER_DAMPING)     # FEATURES_PER_DAMPING = 8000
    ```

    for a Dense or EinsumDense `layer`; `damping` unchanged otherwise. Relative damping bounds the
    condition number of `G_d` by `d / damping`, and so how far `U` can amplify the input's near-null
    directions (ReLU units that are nearly dead or constant): by up to `sqrt(d / damping)` times the mean.
    The LocalFisher defaults (0.01) were measured on the paper's MLP, whose hidden layers read 80
    features: `d / damping = 8000`. This keeps that bound for wider inputs, so 80 features keep 0.01.

    Measured with `python benchmarks/wide_mlp.py` (`benchmarks/results/wide_mlp.txt`: 10,000 real
    Fashion-MNIST images, 2 epochs, a 784-512-512-512-10 ReLU MLP through `reconstruct`, SGD 0.1, batch
    64): with damping 0.01 on its hidden inputs the loss went to 7.07 and 1.45 checking every 10 steps,
    4.52 and 6.86 checking every 50 (chance is 2.30); with this rule (0.064) to 0.729 and 0.306. Alone it
    did not make every setting good: at learning rate 0.3 that MLP ended at 0.80, at batch 16 at 0.63, and
    a 1024-wide one at lr 0.3, batch 32, at 1.51 (without the rule all three diverged, to losses from 48
    to 5.7e7). Those are a second failure, the batch's leverage, which `LocalFisher`'s
    `leverage_scaling`, which `reconstruct` turns on, fixes (0.39, 0.24 and 0.37; `keras_sngd.leverage`, docs/leverage.md); the rule
    is still needed with it (the 512-wide MLP at batch 64 does not train without it). The paper's
    widths (80) keep 0.01 (0.6715 0.3324 for three hidden layers of 80). Convolutions keep the network's damping (0.1 in networks with them); their
    Dense heads with more than 800 features get more.
    """
    if not isinstance(layer, _DENSE_LIKE):
        return damping
    return max(damping, features / FEATURES_PER_DAMPING)


def class_default(layer_class, name):
    """The default of argument `name` in the constructors of `layer_class` and its bases (None if none)."""
    return next((parameter.default for parameter in constructor_parameters(layer_class)
                 if parameter.name == name and parameter.default is not inspect.Parameter.empty), None)
