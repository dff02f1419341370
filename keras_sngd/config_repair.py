"""Rebuilding a layer whose `get_config()` does not match its constructor.

`reconstruct` and `fold` rebuild a model layer by layer, each layer from its own config
(`cls.from_config(layer.get_config())`, as `keras.models.clone_model` and `keras.saving.load_model` do). A
common bug of third-party layers breaks that one call while the layer itself works, and the model holding it
still saves and loads because its own config holds its constructor's arguments rather than its layers'
(a KerasHub backbone). Three forms of it (KerasHub 0.32: ViT's patch embedding, GPT-NeoX's and Qwen3's
decoder blocks, DeiT's encoder, Llama's decoder blocks):

- `get_config()` returns keys the constructor does not take (derived attributes such as `num_patches`):
  `TypeError: Unrecognized keyword arguments passed to ...`;
- `get_config()` leaves out a required argument of the constructor (`missing 1 required positional
  argument: 'head_dim'`) that the layer keeps as an attribute of the same name;
- `get_config()` itself fails (it reads an attribute the constructor never set).

`repaired_clone(layer, config)` repairs those and nothing else:

1. It drops the keys that no `__init__` of the layer's classes names, and adds each required argument the
   config lacks from the layer's attribute of that name. It accepts the repair only if the clone's own
   `get_config()` equals the original's, so that every value the config records (the dropped, derived
   ones included) is rebuilt the same (where a config records what `build` saw, after building the clone
   as `load_model` builds a layer).
2. Where `get_config()` fails, it rebuilds the layer from the constructor arguments Keras recorded when
   the layer was made (`Operation.__new__` keeps them when they are all plain values: numbers, strings,
   None and lists or dicts of them), or, where Keras recorded none (an initializer object among them),
   from the layer's attributes named as the constructor's arguments (every argument must have one, and
   the clone must end up with the same attributes: KerasHub's Llama decoder block, whose `get_config`
   reads an attribute that was renamed).

In both cases, once the new model is built the clone must take the original's weights
(`keras_sngd.graph.copy_weights`; a clone with other weights is refused there, and the model holding it is
copied whole as before). The clone then answers `get_config()` with the repaired config (an attribute of
the instance; the class is left alone), so a model holding it saves to a `.keras` file that loads, and
cloning the clone repairs again. A model loaded from that file holds the layer as its class builds it:
`reconstruct` or `fold` of the loaded model repairs it again, but saving the loaded model a second time as
it is meets the layer's own bug.
"""

import inspect
import types
import typing
import warnings

import keras

_REPAIR = "_keras_sngd_config_repair"


class Repair(typing.NamedTuple):
    """How a clone's config is repaired: keys dropped, arguments added from the layer's attributes, or (for
    a layer whose `get_config()` itself fails) the constructor arguments Keras recorded."""

    dropped: tuple = ()
    added: tuple = ()
    arguments: dict = None


def repaired_clone(layer, config):
    """A clone of `layer` from `config` (its `get_config()`, which its class cannot rebuild; None where
    `get_config()` itself fails) repaired as the module says, or None if no such repair rebuilds it."""
    cls = type(layer)
    if config is None:
        return _from_recorded_arguments(layer)
    accepted = _constructor_arguments(cls)
    if accepted is None:
        return None
    dropped = tuple(key for key in config if key not in accepted)
    added = tuple(name for name in _required_arguments(cls) if name not in config and hasattr(layer, name))
    if not dropped and not added:
        return None
    repair = Repair(dropped, added)
    try:
        clone = cls.from_config(_repaired_config(layer, config, repair))
        same = _same(clone.get_config(), config)
        build_config = layer.get_build_config() if layer.built else None
        if not same and build_config:
            # Built as `load_model` builds a layer: some configs record what `build` saw.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras's note on layers without a `build`
                clone.build_from_config(build_config)
            same = _same(clone.get_config(), config)
    except Exception:
        return None
    if not same:
        return None
    mark_repaired(clone, repair)
    return clone


def _from_recorded_arguments(layer):
    """A layer whose `get_config()` fails, rebuilt from the constructor arguments Keras recorded when it
    was made (`Operation.__new__` keeps them where they are all plain values), or None."""
    recorded = getattr(layer, "_auto_config", None)
    arguments = dict(recorded.config) if recorded is not None else _arguments_from_attributes(layer)
    if arguments is None:
        return None
    repair = Repair(arguments=arguments)
    try:
        clone = type(layer).from_config(_repaired_config(layer, None, repair))
        if recorded is None and not all(_same(_plain(getattr(clone, name)), _plain(getattr(layer, name)))
                                        for name in arguments):
            return None
    except Exception:
        return None
    mark_repaired(clone, repair)
    return clone


def _arguments_from_attributes(layer):
    """Each named argument of the layer's constructor read back from the layer's attribute of the same name
    (values Keras can serialize: an initializer, an activation, numbers), or None if one has no such
    attribute. The clone made from them must hold the same attributes (a constructor that transforms an
    argument on the way in, `self.units = 2 * units`, would not)."""
    try:
        parameters = inspect.signature(type(layer).__init__).parameters
    except (TypeError, ValueError):
        return None
    names = [name for name, parameter in parameters.items() if name != "self"
             and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
             and name not in ("name", "trainable", "dtype")]
    if not all(name in layer.__dict__ or hasattr(type(layer), name) and hasattr(layer, name) for name in names):
        return None
    try:
        return {name: _plain(getattr(layer, name)) for name in names}
    except Exception:
        return None


def _plain(value):
    """`value` as a config holds it: Keras objects and functions serialized, tuples as lists."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return keras.saving.serialize_keras_object(value)


def repair_of(layer):
    """The `Repair` a clone carries, or None."""
    return layer.__dict__.get(_REPAIR)


def mark_repaired(layer, repair):
    """Make `layer.get_config()` return its config repaired by `repair` (a method bound to the instance)."""
    object.__setattr__(layer, _REPAIR, repair)
    object.__setattr__(layer, "get_config", types.MethodType(_repaired_get_config, layer))


def _repaired_get_config(layer):
    repair = layer.__dict__[_REPAIR]
    return _repaired_config(layer, None if repair.arguments is not None else type(layer).get_config(layer), repair)


def _repaired_config(layer, config, repair):
    if repair.arguments is not None:
        # The base layer's part (name, trainable, dtype) as the layer is now, and the recorded arguments.
        return {**keras.layers.Layer.get_config(layer), **repair.arguments}
    repaired = {key: value for key, value in config.items() if key not in repair.dropped}
    for name in repair.added:
        repaired[name] = getattr(layer, name)
    return repaired


def _constructor_arguments(cls):
    """The names every `__init__` along `cls`'s classes takes (a layer passes its `**kwargs` on to its
    parents, down to `keras.layers.Layer`), or None if one cannot be read."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return None
        names.update(name for name, parameter in parameters.items()
                     if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY))
    names.discard("self")
    # Keras's base layer takes these through its own `**kwargs`.
    names.update({"name", "trainable", "dtype", "autocast", "input_shape", "batch_input_shape", "batch_size",
                  "input_dim", "activity_regularizer"})
    return names


def _required_arguments(cls):
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name, parameter in parameters.items()
                 if name != "self" and parameter.default is parameter.empty
                 and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY))


def _same(a, b):
    """Configs equal as saving would write them (numbers by value, tuples as lists)."""
    return _normal(a) == _normal(b)


def _normal(value):
    if isinstance(value, dict):
        # A serialized sublayer's build state is not an argument (its clone is built when first called).
        return {key: _normal(item) for key, item in value.items() if key not in ("build_config", "compile_config")}
    if isinstance(value, (list, tuple)):
        return [_normal(item) for item in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if hasattr(value, "get_config") and not isinstance(value, type):
        try:
            return ("object", type(value).__name__, _normal(keras.saving.serialize_keras_object(value)))
        except Exception:
            return ("object", type(value).__name__)
    return value
