"""`reconstruct(model)`: the SNGD network, a `LocalFisher` before every parameterized layer."""

import logging
import warnings

import keras

from keras_sngd.binding import binding_for
from keras_sngd.binding import bindings_for
from keras_sngd.binding import layer_family
from keras_sngd.binding import inner_binding
from keras_sngd.binding import cannot_absorb_mixing
from keras_sngd.binding import ATTENTION_TYPES
from keras_sngd.binding import argument_place
from keras_sngd.binding import SUPPORTED_TYPES
from keras_sngd.binding import is_supported_type
from keras_sngd.graph import calls_read_fixed_features
from keras_sngd.graph import check_rewritable
from keras_sngd.graph import clone_functional
from keras_sngd.graph import LayerCloneError
from keras_sngd.graph import clone_layer
from keras_sngd.graph import clone_model_whole
from keras_sngd.graph import copy_weights
from keras_sngd.graph import first_tensor
from keras_sngd.graph import with_first_argument
from keras_sngd.graph import is_layer
from keras_sngd.graph import reads_fixed_features
from keras_sngd.graph import mark_built_on_call
from keras_sngd.graph import sequential_input
from keras_sngd.graph import source_operation
from keras_sngd.graph import walk_layers
from keras_sngd.fisher_layer import FisherLayer
from keras_sngd.inner_whitening import InnerWhitening
from keras_sngd.inner_whitening import call_spec
from keras_sngd.inner_whitening import candidate_reason
from keras_sngd.inner_whitening import composite_plan
from keras_sngd.inner_whitening import inner_layers
from keras_sngd.inner_whitening import is_composite
from keras_sngd.inner_whitening import standalone_arguments
from keras_sngd.handoff import user_constraint
from keras_sngd.regularization import user_regularizer
from keras_sngd.layer_defaults import default_arguments
from keras_sngd.layer_defaults import feeds_normalization
from keras_sngd.layer_defaults import FEATURES_PER_DAMPING
from keras_sngd.layer_defaults import class_default
from keras_sngd.layer_defaults import fixed_feature_damping
from keras_sngd.layer_defaults import constructor_parameters
from keras_sngd.layer_defaults import fixed_feature_statistics
from keras_sngd.layer_defaults import width_damping
from keras_sngd.local_fisher import LocalFisher
from keras_sngd.recurrent_whitening import RecurrentWhitening
from keras_sngd.recurrent_whitening import recurrent_layers
from keras_sngd.recurrent_whitening import state_binding
from keras_sngd.recurrent_whitening import state_reason
from keras_sngd.step_bound import StepBound
from keras_sngd.width import MAX_FEATURES
from keras_sngd.width import check_max_features
from keras_sngd.width import too_wide_reason

logger = logging.getLogger("keras_sngd")

FROZEN = ("frozen (trainable=False): it takes no gradient step, so there is nothing to precondition "
          "(unfreeze it and call reconstruct again to whiten its input)")


class ReconstructionReport:
    """What `reconstruct` did, layer by layer: `print(report)` for a table, `report.summary()` for one line.

    Attributes:
        inserted: list of `(layer_path, layer_type, local_fisher_name, features, axis)`.
        skipped: list of `(layer_path, layer_type, reason)`.
        notes: list of `(local_fisher_name, note)`: arguments chosen for one inserted layer, and why.
    """

    def __init__(self, layer_name="LocalFisher"):
        self.layer_name = layer_name  # the inserted layers' class, for the printed rows
        self.inserted = []
        self.skipped = []
        self.notes = []

    def mark(self):
        """A position in the report, to `rollback` to."""
        return len(self.inserted), len(self.skipped), len(self.notes)

    def rollback(self, mark):
        """Forget what was recorded after `mark`."""
        del self.inserted[mark[0]:], self.skipped[mark[1]:], self.notes[mark[2]:]

    def summary(self):
        """One line: how many LocalFishers were inserted, and the skipped layers grouped by type and reason."""
        line = f"reconstruct: {len(self.inserted)} {self.layer_name} layers inserted, {len(self.skipped)} layers skipped"
        groups = {}
        for path, kind, reason in self.skipped:
            groups.setdefault((kind, reason), []).append(path)
        if groups:
            parts = []
            for (kind, reason), paths in groups.items():
                names = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                parts.append(f"{len(paths)} {kind} ({names}): {reason}")
            line += " (" + "; ".join(parts) + ")"
        return line

    def __str__(self):
        rows = [self.summary()]
        notes = {}
        for name, note in self.notes:
            notes.setdefault(name, []).append(note)
        for path, kind, name, features, axis in self.inserted:
            rows.append(f"  + {path} ({kind}): {self.layer_name} '{name}', {features} features on axis {axis}"
                        + "".join(f"; {note}" for note in notes.get(name, [])))
        for path, kind, reason in self.skipped:
            rows.append(f"  - {path} ({kind}): skipped, {reason}")
        return "\n".join(rows)

    __repr__ = __str__


def reconstruct(
    model,
    layer_types=None,
    exclude=(),
    local_fisher_arguments=None,
    per_layer_arguments=None,
    return_report=False,
    layer_class=LocalFisher,
    recurrent_state=True,
    max_features=MAX_FEATURES,
):
    """A copy of `model` with a `LocalFisher` before every parameterized layer call (the SNGD network).

    The paper's reconstruction: each supported layer `y = f(W^T x + b)` becomes `y = f(W'^T U x + b)`,
    with `U = G^(-1/2)` held by a new `LocalFisher` and `W' = W` at first (`U` starts as the identity), so
    the copy computes exactly the original's outputs until training moves it. Plain SGD on `W'` is then
    NGD on `W = U W'` (Proposition 1), and `fold` turns the copy back into a plain model.

    Works on Functional and Sequential models (also loaded from `.keras`), recursively on nested models,
    with residual connections, several inputs and outputs, and shared layers (a layer called at several
    places gets one LocalFisher shared by those calls, since one `U` must serve the one shared kernel: every
    call's batch joins its statistics, and its step count, refresh and trust region run once per training
    step, at the first call of the forward pass, whose `U` the later calls use). The
    original model is neither changed nor shares any variable with the copy. A layer whose input already
    comes from a `LocalFisher` gets no second one, so reconstructing twice inserts nothing new.

    Supported layers: Dense, EinsumDense (one contracted input axis, the last), Conv1D/2D/3D,
    Conv1D/2D/3DTranspose, LSTM/GRU/SimpleRNN and `RNN` with an LSTMCell, GRUCell or SimpleRNNCell (or
    stacked cells, whose first reads the input), ConvLSTM1D/2D/3D (their input kernel), and the wrappers
    `TimeDistributed` of a supported layer and `Bidirectional` (one LocalFisher whose refresh re-expresses
    both directions' input kernels), and `MultiHeadAttention`/`GroupQueryAttention` (their query, key and
    value projections: one LocalFisher per distinct tensor among the call's query, key and value, named
    after the layer for self-attention and after the projections otherwise, e.g.
    `attention_key_value_local_fisher`; the output projection reads the attention's result, made inside
    the call, and keeps its kernel). Skipped, with the reason in the
    report: frozen layers (`trainable=False`, also inside a frozen nested model: nothing to precondition;
    reconstructing the trained copy again after unfreezing whitens them, the LocalFishers already there
    keeping their state and arguments; a LocalFisher whose consumers are frozen after `reconstruct` rests
    in inference mode), depthwise and separable convolutions and grouped convolutions (no kernel can absorb a mixing of
    their input channels), LoRA-enabled or quantized layers, layers whose kernel has a constraint (a
    `kernel_constraint` such as `MaxNorm` or `NonNeg` is meant for `W`; on the whitened `W'` it would be
    another constraint, and the folded `W = U W'` would not satisfy it: naming the layer in
    `per_layer_arguments` inserts a LocalFisher anyway), layers inside a `SpectralNormalization` (its call
    divides the kernel by its largest singular value: on `W'` that is another function, which every refresh
    would change), and layers excluded by name or type. Raw
    operations in the graph (`x + y`, `x[:, 0]`, `keras.ops.cast`) pass through unchanged.

    Composite layers (a KerasHub `TransformerEncoder`/`TransformerDecoder`, a user's block: any layer not
    from Keras itself whose `call` calls Dense, EinsumDense or convolution layers of its own, out of the
    graph's reach) are wrapped in a `keras_sngd.InnerWhitening` of the same name, which puts a LocalFisher
    before each tensor those inner layers read, inside the call (one for the query, key and value of a
    self-attention); the report names them `composite/inner` and says which inner layers were skipped and
    why (one called twice inside the call, an EinsumDense contracting two axes such as an attention's
    output projection, a frozen one). The names in `exclude` and `per_layer_arguments` may be inner layers'
    names too; excluding the composite's name leaves it whole. With another `layer_class` (the NGD
    baseline's `FisherStatistics`) composites are left whole.

    Recurrent layers (LSTM, GRU, SimpleRNN, `RNN` of such a cell, `Bidirectional` of one) also get a
    LocalFisher on the state their recurrent kernel reads, `h_(t-1)` inside the loop over time: they are
    wrapped in a `keras_sngd.RecurrentWhitening` of the same name, which computes with `R = U_h R'`
    (`recurrent_state=False` leaves the recurrent kernels plain); the report names it `layer/state`.

    Args:
        model: a built `keras.Sequential` or Functional `keras.Model`.
        layer_types: None (every supported type) or a tuple of layer classes to give a LocalFisher, e.g.
            `(keras.layers.Dense,)`. Defaults to `None`.
        exclude: names of layers that get no LocalFisher. Defaults to `()`.
        local_fisher_arguments: dict of `LocalFisher` arguments for every inserted layer (`axis` is set from
            the consumer). Defaults to `None`: a trust region on each step (`max_step`, 0.05, smaller in deep
            networks without normalization: `keras_sngd.layer_defaults.trust_radius`) and otherwise the
            LocalFisher defaults for a network of Dense layers, and also
            `keras_sngd.layer_defaults.STABLE_ARGUMENTS` (stronger damping, earlier refreshes) when the
            network has a convolution, recurrent, attention or composite (transformer) layer
            (`keras_sngd.layer_defaults.needs_stable_arguments`); and `damping` 1.0 before a Dense or EinsumDense
            layer whose input is fixed features (no layer with trainable weights before it: raw or
            preprocessed data, a frozen backbone's output), so that whitening does not erase the data's own
            structure (`keras_sngd.layer_defaults.fixed_feature_damping`; the report notes it); and
            `rank="auto"`, a low-rank-plus-identity `U` before Dense layers with at least 256 input features
            and damping of at least 0.1 (`keras_sngd.low_rank`; noted too). Keys given here override those.
        per_layer_arguments: dict from a layer name to a dict of `LocalFisher` arguments for the layer before
            it, over `local_fisher_arguments`. Defaults to `None`.
        return_report: also return the `ReconstructionReport`. Defaults to `False`.
        layer_class: the layer to insert, `LocalFisher` or a subclass such as `FisherStatistics` (the
            NGD baseline's statistics without the reconstruction). Defaults to `LocalFisher`.
        recurrent_state: bool; whether recurrent layers also get a LocalFisher on their recurrent state
            (`keras_sngd.RecurrentWhitening`). Only with `layer_class=LocalFisher`. Defaults to `True`.
        max_features: None or an int >= 1; a layer whose input has more features than this stays plain
            (the report says so), with a `StepBound` before it where the LocalFishers have a trust region:
            a LocalFisher keeps `(d, d)` state and refreshes it at `O(d^3)`, 5 GB for the 25,088 features
            `keras.applications.VGG16`'s `fc1` reads at 224x224 (`keras_sngd.width`). Naming the layer in
            `per_layer_arguments` whitens it anyway; None whitens every width. Defaults to `8192`.

    Returns:
        The new model (same class: Sequential or Functional), or `(model, report)`. The report's one-line
        summary is also logged to the `keras_sngd` logger at INFO level.

    Example:

    ```python
    plain = keras.saving.load_model("model.keras")
    sngd, report = keras_sngd.reconstruct(plain, return_report=True)
    print(report)
    sngd.compile(optimizer=keras.optimizers.SGD(0.1), loss=...)
    sngd.fit(...)  # every backend; no callback needed (on JAX the optimizer applies the re-expression)
    deployable = keras_sngd.fold(sngd)
    ```
    """
    if layer_types is not None:
        layer_types = tuple(layer_types)
        if not layer_types or not all(isinstance(kind, type) and issubclass(kind, SUPPORTED_TYPES) for kind in layer_types):
            raise ValueError(
                "`layer_types` must be None or a non-empty tuple of supported layer classes (Dense, "
                "EinsumDense, Conv1D/2D/3D, Conv*Transpose, LSTM, GRU, SimpleRNN, RNN, ConvLSTM1D/2D/3D, "
                "TimeDistributed, Bidirectional, MultiHeadAttention, GroupQueryAttention). "
                f"Received: layer_types={layer_types!r}"
            )
    if not (isinstance(layer_class, type) and issubclass(layer_class, FisherLayer)):
        raise ValueError(f"`layer_class` must be LocalFisher, FisherStatistics or a subclass of keras_sngd.fisher_layer.FisherLayer. Received: layer_class={layer_class!r}")
    if not isinstance(recurrent_state, bool):
        raise ValueError(f"`recurrent_state` must be a bool. Received: recurrent_state={recurrent_state!r}")
    max_features = check_max_features(max_features)
    if isinstance(exclude, str):
        raise ValueError(f"`exclude` must be a collection of layer names, not a string. Received: exclude={exclude!r}")
    exclude = set(exclude)
    local_fisher_arguments = dict(local_fisher_arguments or {})
    per_layer_arguments = dict(per_layer_arguments or {})
    for name, arguments in [("local_fisher_arguments", local_fisher_arguments)] + [
        (f"per_layer_arguments[{key!r}]", value) for key, value in per_layer_arguments.items()
    ]:
        if not isinstance(arguments, dict):
            raise ValueError(f"`{name}` must be a dict of LocalFisher arguments. Received: {name}={arguments!r}")
        if "axis" in arguments or "name" in arguments:
            raise ValueError(f"`{name}` cannot set `axis` or `name`: they follow from the layer. Received: {arguments!r}")
        LocalFisher(**arguments)  # validates every argument with the layer's own ValueErrors
    check_rewritable(model, "reconstruct")
    known = {layer.name for _, layer in walk_layers(model)}
    # The layers inside composite layers (`keras_sngd.inner_whitening`) can be named too.
    known |= {inner.name for _, layer in walk_layers(model) if is_layer(layer) and is_composite(layer)
              for inner in inner_layers(layer)}
    unknown = (exclude | set(per_layer_arguments)) - known
    if unknown:
        raise ValueError(f"No layers named {sorted(unknown)} in model {model.name!r} (from `exclude`/`per_layer_arguments`).")

    options = {
        "user_keys": set(local_fisher_arguments),
        "layer_types": layer_types,
        "exclude": exclude,
        "arguments": dict(default_arguments(model, layer_class), **local_fisher_arguments),
        "per_layer": per_layer_arguments,
        "layer_class": layer_class,
        "recurrent_state": recurrent_state and layer_class is LocalFisher,
        "max_features": max_features,
        "accepted": {parameter.name for parameter in constructor_parameters(layer_class)},
    }
    report = ReconstructionReport(layer_class.__name__)
    try:
        new_model = _reconstruct(model, options, report, prefix="", inputs_are_fixed=True)
    except LayerCloneError as error:
        new_model = _copied_whole(model, error, report, (0, 0, 0), "")
        warnings.warn(
            f"reconstruct: model {model.name!r} cannot be rebuilt layer by layer ({error.reason}); it was "
            "copied whole from its own config, with no LocalFisher. Call reconstruct on a model that holds "
            "it as a nested model (e.g. a backbone under a head) to whiten the layers around it.",
            stacklevel=2,
        )
    for _, layer in walk_layers(new_model):
        if isinstance(layer, FisherLayer) and layer.built and layer._low_rank():
            report.notes.append((layer.name, f"U of rank {layer._resolved_rank} plus identity "
                                             f"(rank={layer.rank!r}; keras_sngd.low_rank)"))
    for _, layer in walk_layers(new_model):
        # On JAX: the consumers' constraints and the trust region's state, before fit traces a step.
        if hasattr(layer, "prepare_handoff"):
            layer.prepare_handoff()
        if isinstance(layer, StepBound):
            layer.prepare()
    logger.info(report.summary())
    return (new_model, report) if return_report else new_model


def _decide(layer, options, prefix, report, already_whitened, reads_fixed, group=None, name=None, path=None,
            bindings=None):
    """The LocalFisher to put before `layer` (a new one), or None; records the decision in `report`.
    `reads_fixed`: a callable, whether the layer's input is fixed features (`reads_fixed_features`).
    `group`: for an attention layer called on different tensors, the labels of the projections that read
    the tensor this LocalFisher goes before (`_attention_groups`); None for all of the layer's kernels.
    `name`, `path`, `bindings`: the LocalFisher's name, the report's path and the layer's bindings, where
    not the layer's own (inside a composite layer, `_inner_whitening`)."""
    if path is None:
        path = prefix + layer.name
        if group is not None:
            path = f"{path} ({'/'.join(group)})"
    kind = type(layer).__name__
    if not is_layer(layer) or isinstance(layer, (FisherLayer, StepBound, keras.layers.InputLayer)) or not layer.weights:
        return None
    if isinstance(layer, InnerWhitening):
        report.skipped.append((path, kind, (
            f"already has {len(layer.fishers)} LocalFishers inside, before the layers of "
            f"{type(layer.layer).__name__} '{layer.layer.name}'")))
        return None
    if not is_supported_type(layer):
        if isinstance(layer, keras.Model):
            return None
        _, reason = binding_for(layer)
        return _skipped_or_bounded(layer, options, report, path, reason, already_whitened)
    if layer.name in options["exclude"]:
        report.skipped.append((path, kind, "excluded by name"))
        return None
    if options["layer_types"] is not None and not isinstance(layer, options["layer_types"]):
        report.skipped.append((path, kind, "type not in layer_types"))
        return None
    bindings_given = bindings is not None
    if bindings is None:
        bindings, reason = bindings_for(layer)
        if not bindings:
            return _skipped_or_bounded(layer, options, report, path, reason, already_whitened)
    if group is not None:
        bindings = [each for each in bindings if each.label in group]
    # One LocalFisher for all of the layer's kernels on its input (both directions of a Bidirectional, an
    # attention layer's projections of one tensor): they read the same features.
    binding = bindings[0]
    wide = None
    if layer.name not in options["per_layer"]:
        wide = too_wide_reason(binding.features, options["max_features"], layer.name)
    # (A StepBound before a wide layer is this rule's own, from reconstructing before.)
    if already_whitened is not None and not (wide is not None and isinstance(already_whitened, StepBound)):
        report.skipped.append((path, kind, f"already has LocalFisher '{already_whitened.name}'"))
        return None
    if not all(each.trainable for each in bindings):
        report.skipped.append((path, kind, FROZEN))
        return None
    constraint = next((found for found in (user_constraint(each.kernel) for each in bindings) if found), None)
    if constraint is not None and layer.name not in options["per_layer"]:
        report.skipped.append((path, kind, (
            f"its kernel has a constraint ({type(constraint).__name__}) meant for W; with a LocalFisher it "
            "would act on the whitened kernel W' (W = U W') instead, and a refresh's re-expression could "
            f"make it bind and change the function (name it in per_layer_arguments, e.g. {{{layer.name!r}: "
            "{}}, to insert one anyway)"
        )))
        return None
    if wide is not None:
        if (bindings_given or group is not None or isinstance(layer, ATTENTION_TYPES)
                or (options["recurrent_state"] and layer_family(layer) == "recurrent")):
            # Inside a composite layer, on a recurrent state or an attention layer's inputs: no StepBound (it
            # bounds the one layer its output feeds as that layer's only input). Nor before a recurrent layer
            # whose state gets a LocalFisher (`_recurrent_whitening`): that LocalFisher's trust region
            # already bounds the recurrent kernel, and a StepBound over the same weights would undo it.
            report.skipped.append((path, kind, wide))
            return None
        return _skipped_or_bounded(layer, options, report, path, wide, already_whitened, bound=True)
    own = options["per_layer"].get(layer.name, {})
    arguments = dict(options["arguments"], **own)
    if name is None:
        name = f"{layer.name}_local_fisher" if group is None else f"{layer.name}_{'_'.join(group)}_local_fisher"
    note = None
    user_damping = "damping" in options["user_keys"] | set(own)
    user_statistics = bool({"statistics_every", "adaptive_statistics"} & (options["user_keys"] | set(own)))
    # Whether the input is fixed features: a walk of the graph, done only when a rule needs it.
    fixed = reads_fixed() if not (user_damping and user_statistics) else False
    if not user_damping and fixed:
        damping = fixed_feature_damping(layer, arguments.get("damping", 0.0), binding.features)
        if damping != arguments.get("damping"):
            arguments["damping"] = damping
            note = f"damping {damping:g}: its input is fixed features (no trained layer before it)"
    elif not user_damping:
        base = arguments.get("damping", class_default(options["layer_class"], "damping"))
        if base is not None:
            damping = width_damping(layer, base, binding.features)
            if damping != base:
                arguments["damping"] = damping
                note = (f"damping {damping:g}: {binding.features} input features (at most "
                        f"{FEATURES_PER_DAMPING} per unit of damping, as the paper MLP's 80 at 0.01)")
    if (fixed and not user_statistics and fixed_feature_statistics(layer, binding.features)
            and "adaptive_statistics" in options["accepted"]):
        arguments["adaptive_statistics"] = True
        statistics_note = ("adaptive statistics: taken in less often while U still whitens them (fixed "
                           "features depend on the data alone)")
    else:
        statistics_note = None
    regularizer = next((found for found in (user_regularizer(each.kernel) for each in bindings) if found), None)
    if regularizer is not None:
        # Kept on W = U W', not on W' (`keras_sngd.regularization`).
        said = (f"its kernel regularizer ({type(regularizer).__name__}) acts on the effective kernel U W', "
                "as on W before")
        note = said if note is None else f"{note}; {said}"
    local_fisher = options["layer_class"](axis=binding.feature_axis, name=name, **arguments)
    report.inserted.append((path, kind, local_fisher.name, binding.features, binding.feature_axis))
    for said in (note, statistics_note):
        if said:
            report.notes.append((local_fisher.name, said))
    return local_fisher


def _skipped_or_bounded(layer, options, report, path, reason, already_bounded, bound=False):
    """Record that `layer` gets no LocalFisher, for `reason`; return the `StepBound` to put before it when it
    is a trainable layer SNGD cannot whiten (`keras_sngd.binding.cannot_absorb_mixing`) or one it leaves
    plain by choice (`bound`: an input wider than `max_features`) whose output does not go straight into a
    normalization layer, and the LocalFishers have a trust region (`keras_sngd.step_bound`), else None."""
    kind = type(layer).__name__
    arguments = dict(options["arguments"], **options["per_layer"].get(layer.name, {}))
    radius = arguments.get("max_step")
    if (
        (bound or cannot_absorb_mixing(layer))
        and radius is not None
        and "max_step" in options["accepted"]
        and options["layer_types"] is None
        and layer.name not in options["exclude"]
        and layer.trainable
        and layer.trainable_weights
        and not isinstance(already_bounded, StepBound)
        and not feeds_normalization(layer)
    ):
        step_bound = StepBound(max_step=radius, name=f"{layer.name}_step_bound")
        report.skipped.append((path, kind, (
            f"{reason}; StepBound '{step_bound.name}' bounds its steps instead (max_step={radius:g}: the trust "
            "region of the layers SNGD cannot whiten, keras_sngd.step_bound)"
        )))
        return step_bound
    report.skipped.append((path, kind, reason))
    return None


def _whitens_inside(layer, options):
    """Whether `reconstruct` looks inside `layer`, a composite layer (`keras_sngd.inner_whitening`), for
    layers to whiten: it inserts plain LocalFishers (not another `layer_class`)."""
    return options["layer_class"] is LocalFisher and is_layer(layer) and is_composite(layer)


def _inner_whitening(original, new, args, kwargs, options, prefix, report):
    """The `InnerWhitening` of `new` (the clone of the composite layer `original`, called as
    `original(*args, **kwargs)` in the graph) with a LocalFisher before each tensor its inner
    Dense/EinsumDense/convolution layers read, or None (the report says why). Builds `new`."""
    path, kind = prefix + original.name, type(original).__name__
    if original.name in options["exclude"]:
        report.skipped.append((path, kind, "excluded by name"))
        return None
    if not original.trainable:
        report.skipped.append((path, kind, FROZEN))
        return None
    standalone = standalone_arguments(args, kwargs)
    if standalone is None:
        report.skipped.append((path, kind, (
            "composite layer called with arguments that are neither tensors nor plain Python values: its inner "
            "layers cannot be traced")))
        return None
    try:
        # Built by a call of its own on copies of the arguments: no node in the new model's graph.
        new(*standalone[0], **standalone[1])
        originals, copies = inner_layers(original), inner_layers(new)
        if len(originals) == len(copies):
            for before, after in zip(originals, copies):
                after.trainable = before.trainable  # not part of the composite's config
                # The user's names: a copy from the config numbers auto-named inner layers afresh (`dense`
                # -> `dense_8`) and some composites derive them differently, while `exclude`,
                # `per_layer_arguments` and the report speak of the original's inner layers.
                after.name = before.name
        groups, skipped = composite_plan(new, *standalone)
    except Exception as error:  # a layer Keras cannot trace symbolically: keep it whole, and say so
        report.skipped.append((path, kind, (
            f"composite layer whose call could not be traced to find the layers inside it "
            f"({type(error).__name__}: {error})")))
        return None
    sublayers = inner_layers(new)
    specs = []
    for indices, shape, contracted in groups:
        members = []
        for index in indices:
            sublayer = sublayers[index]
            reason = _inner_member_reason(sublayer, options)
            if reason is None:
                members.append(sublayer)
            else:
                skipped.append((index, reason))
        if not members:
            continue
        names = [member.name for member in members]
        inner_path = f"{path}/{'+'.join(names)}"
        name = f"{original.name}_{'_'.join(names)}_local_fisher"
        taken = {spec["config"]["name"] for spec in specs}
        name = next(candidate for candidate in [name] + [f"{name}_{count}" for count in range(2, len(specs) + 2)]
                    if candidate not in taken)
        local_fisher = _decide(members[0], options, prefix, report, None, lambda: False, name=name, path=inner_path,
                               bindings=[inner_binding(members[0])[0]])
        if local_fisher is None:
            continue
        note = f"inside {kind} '{original.name}' (keras_sngd.InnerWhitening), before {', '.join(names)}"
        cannot_center = next((reason for reason in (inner_binding(member)[0].exact_centering_refusal
                                                    for member in members) if reason), None)
        if local_fisher.center and cannot_center:
            # Inside a composite layer there is no graph to put the shift back into (fold puts a
            # Normalization layer before a graph consumer whose bias cannot absorb it): no centering.
            local_fisher = type(local_fisher).from_config(dict(local_fisher.get_config(), center=False))
            note += f"; not centered ({cannot_center})"
        report.notes.append((local_fisher.name, note))
        specs.append({"consumers": [sublayers.index(member) for member in members], "input_shape": shape,
                      "contracted": contracted, "config": local_fisher.get_config()})
    for index, reason in skipped:
        sublayer = sublayers[index]
        report.skipped.append((f"{path}/{sublayer.name}", type(sublayer).__name__, reason))
    if not specs:
        report.skipped.append((path, kind, "composite layer with no inner layer that can take a LocalFisher"))
        return None
    return InnerWhitening(new, fishers=specs, call_spec=call_spec(*standalone), name=original.name)


def _recurrent_whitening(original, new, options, prefix, report):
    """The `RecurrentWhitening` of `new` (the clone of the recurrent layer `original`), with a LocalFisher on
    the state each of its recurrent kernels reads, or None (not a recurrent layer, or the report says why)."""
    if (not options["recurrent_state"] or not is_layer(original) or isinstance(original, RecurrentWhitening)
            or layer_family(original) != "recurrent"):
        return None
    path, kind = prefix + original.name + "/state", type(original).__name__
    if isinstance(original, keras.layers.TimeDistributed):
        if original.name not in options["exclude"]:
            report.skipped.append((path, kind, (
                "a recurrent layer inside TimeDistributed: its state is not whitened (RecurrentWhitening wraps "
                "RNN and Bidirectional layers)")))
        return None
    if original.name in options["exclude"]:
        return None  # recorded for the layer itself
    if options["layer_types"] is not None and not isinstance(original, options["layer_types"]):
        return None
    reason = state_reason(original)
    if reason is not None:
        report.skipped.append((path, kind, reason))
        return None
    targets = recurrent_layers(original)
    labels = [""] if len(targets) == 1 else ["_forward", "_backward"]
    configs = []
    for target, label in zip(targets, labels):
        local_fisher = _decide(original, options, prefix, report, None, lambda: False,
                               name=f"{original.name}{label}_state_local_fisher", path=path + label.replace("_", " "),
                               bindings=[state_binding(target)])
        if local_fisher is None:
            return None
        report.notes.append((local_fisher.name, (
            f"on the state h_(t-1) read by the recurrent kernel of {kind} '{original.name}'"
            f"{' (' + label[1:] + ')' if label else ''} (keras_sngd.RecurrentWhitening: R = U_h R')")))
        configs.append(local_fisher.get_config())
    return RecurrentWhitening(new, fishers=configs, name=original.name)


def _inner_member_reason(sublayer, options):
    """None if the inner layer `sublayer` may share its group's LocalFisher, else why not."""
    reason = candidate_reason(sublayer)
    if reason is not None:
        return reason
    if sublayer.name in options["exclude"]:
        return "excluded by name"
    if options["layer_types"] is not None and not isinstance(sublayer, options["layer_types"]):
        return "type not in layer_types"
    constraint = user_constraint(sublayer.kernel)
    if constraint is not None and sublayer.name not in options["per_layer"]:
        return (f"its kernel has a constraint ({type(constraint).__name__}) meant for W; with a LocalFisher it "
                "would act on the whitened kernel W' (W = U W') instead")
    return None


def _attention_groups(layer, args, kwargs):
    """For a call of the attention `layer`: `(group, tensor, places)` per distinct tensor among the call's
    query, key and value, where `group` is None when one tensor feeds every projection (self-attention: one
    LocalFisher named after the layer) and else the labels of the projections that read `tensor`, and
    `places` are the `(keyword, position)` of the arguments to replace by the whitened tensor. None if the
    layer's projections cannot be bound; empty if an argument they read is not one tensor."""
    bindings, _ = bindings_for(layer)
    if not bindings:
        return None
    found = []
    for binding in bindings:
        place, tensor = argument_place(binding, args, kwargs)
        if not isinstance(tensor, keras.KerasTensor):
            return []
        for entry in found:
            if entry[1] is tensor:
                entry[0].append(binding.label)
                entry[2].append(place)
                break
        else:
            found.append(([binding.label], tensor, [place]))
    if len(found) == 1:
        return [(None, found[0][1], found[0][2])]
    return [(tuple(labels), tensor, places) for labels, tensor, places in found]


def _replaced(args, kwargs, places, tensor):
    """`(args, kwargs)` with the arguments at `places` (`(keyword, position)`) replaced by `tensor`."""
    args, kwargs = list(args), dict(kwargs)
    for keyword, position in places:
        if len(args) > position:
            args[position] = tensor
        else:
            kwargs[keyword] = tensor
    return tuple(args), kwargs


def _copied_whole(model, error, report, mark, prefix):
    """`model` (nested, or the one given to `reconstruct`), one of whose layers cannot be rebuilt from its
    config (`error`), copied whole from the model's own config (`keras_sngd.graph.clone_model_whole`: how
    `keras.models.clone_model` and `load_model` copy a KerasHub backbone) with no LocalFisher inside; the
    report forgets what was recorded after `mark` and names each layer with weights inside, whose paths
    start with `prefix`. Raises `error` when the model cannot be copied that way either."""
    try:
        new = clone_model_whole(model)
    except Exception:
        new = None
    if new is None:
        raise error
    report.rollback(mark)
    reason = (f"inside model {model.name!r}, copied whole from its own config because it cannot be "
              f"rebuilt layer by layer: {error.reason}")
    for path, layer in _paths(model, prefix):
        if is_layer(layer) and not isinstance(layer, keras.Model) and layer.weights:
            report.skipped.append((path, type(layer).__name__, reason))
    return new


def _paths(model, prefix):
    """`(path, layer)` for every layer of `model` and of the models nested in it, as the report names them."""
    for layer in model.layers:
        yield prefix + layer.name, layer
        if isinstance(layer, keras.Model):
            yield from _paths(layer, prefix + layer.name + "/")


def _reconstruct(model, options, report, prefix, inputs_are_fixed):
    """`reconstruct` of `model`, whose inputs are fixed features if `inputs_are_fixed` (False for a nested
    model called on what a trained layer computed)."""
    pairs = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            fixed = calls_read_fixed_features(layer, inputs_are_fixed)
            mark = report.mark()
            try:
                new = _reconstruct(layer, options, report, prefix + layer.name + "/", fixed)
            except LayerCloneError as error:
                new = _copied_whole(layer, error, report, mark, prefix + layer.name + "/")
        else:
            new = clone_layer(layer)
        pairs.append((layer, new))
        return new

    if isinstance(model, keras.Sequential):
        new_layers = [sequential_input(model)]
        previous = None
        for layer in model.layers:
            if _whitens_inside(layer, options):
                new = clone(layer)
                node = layer._inbound_nodes[0]
                wrapper = _inner_whitening(layer, new, node.arguments.args, node.arguments.kwargs, options, prefix,
                                           report)
                new_layers.append(new if wrapper is None else wrapper)
                previous = layer
                continue
            whitened = previous if isinstance(previous, (FisherLayer, StepBound)) else None
            reads_fixed = lambda layer=layer: calls_read_fixed_features(layer, inputs_are_fixed)  # noqa: E731
            local_fisher = _decide(layer, options, prefix, report, whitened, reads_fixed)
            if local_fisher is not None:
                new_layers.append(local_fisher)
            new = clone(layer)
            new_layers.append(_recurrent_whitening(layer, new, options, prefix, report) or new)
            previous = layer
        new_model = keras.Sequential(new_layers, name=model.name, trainable=model.trainable)
        mark_built_on_call(new_model)
    else:
        shared = {}

        def rewrite_call(original, layer, args, kwargs):
            if original is None or isinstance(layer, keras.Model):
                return layer(*args, **kwargs)
            if _whitens_inside(original, options):
                key = (id(layer), "inside")
                if key not in shared:
                    shared[key] = _inner_whitening(original, layer, args, kwargs, options, prefix, report)
                if shared[key] is not None:
                    return shared[key](*args, **kwargs)
                return layer(*args, **kwargs)
            if isinstance(original, ATTENTION_TYPES):
                groups = _attention_groups(original, args, kwargs)
                if groups is None:  # no bindable projections: `_decide` records why
                    if (id(layer), None) not in shared:
                        shared[(id(layer), None)] = _decide(original, options, prefix, report, None, None)
                    groups = []
            else:
                tensor = first_tensor(args, kwargs)
                groups = [] if tensor is None else [(None, tensor, [])]
            for group, tensor, places in groups:
                key = (id(layer), group)
                if key not in shared:
                    producer = source_operation(tensor)
                    whitened = producer if isinstance(producer, (FisherLayer, StepBound)) else None
                    shared[key] = _decide(original, options, prefix, report, whitened,
                                          lambda tensor=tensor: reads_fixed_features(tensor, inputs_are_fixed), group)
                local_fisher = shared[key]
                if local_fisher is not None:
                    whitened_tensor = local_fisher(tensor)
                    if places:
                        args, kwargs = _replaced(args, kwargs, places, whitened_tensor)
                    else:
                        args, kwargs = with_first_argument(args, kwargs, whitened_tensor)
            if isinstance(original, ATTENTION_TYPES) and (id(layer), "output") not in shared:
                shared[(id(layer), "output")] = True
                fishers = [shared.get((id(layer), group)) for group, _, _ in groups]
                fishers = [fisher for fisher in fishers if fisher is not None]
                output = getattr(original, "_output_dense", None)
                if fishers and output is not None:
                    report.notes.append((fishers[0].name, (
                        f"the output projection '{output.name}' reads the attention's result, made inside the call: "
                        "no LocalFisher before it")))
            key = (id(layer), "state")
            if key not in shared:
                shared[key] = _recurrent_whitening(original, layer, options, prefix, report)
            return (shared[key] or layer)(*args, **kwargs)

        new_model = clone_functional(model, clone, rewrite_call)
    copy_weights(pairs)
    return new_model
