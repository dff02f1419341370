"""Argument checks shared by every public function and layer of the package.

Each check returns the value in its canonical Python type or raises a `ValueError` that names the
argument and the value received, in one style:

    `damping` must be a finite float >= 0. Received: damping=True

Booleans are never numbers here (`damping=True` is an error), and floats must be finite.
"""

import math
import numbers


def _fail(name, expected, value):
    raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name, value, minimum=None, maximum=None, allow_none=False):
    """An int in `[minimum, maximum]` (either bound may be None); None passes if `allow_none`."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(name, _describe("an int", minimum, maximum, allow_none=allow_none), value)
    return int(value)


def check_float(name, value, minimum=None, maximum=None, exclusive_minimum=False, exclusive_maximum=False,
                allow_none=False):
    """A finite real number within the bounds (inclusive unless `exclusive_*`), as a float."""
    if value is None and allow_none:
        return None
    ok = _is_real(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        expected = _describe("a finite float", minimum, maximum, exclusive_minimum, exclusive_maximum, allow_none)
        _fail(name, expected, value)
    return float(value)


def check_bool(name, value):
    """A bool (not 0 or 1)."""
    if not isinstance(value, bool):
        _fail(name, "a bool", value)
    return value


def check_choice(name, value, choices, allow_none=False):
    """One of `choices` (compared with `==`)."""
    if value is None and allow_none:
        return None
    if not any(value == choice and type(value) is type(choice) for choice in choices):
        expected = "one of " + ", ".join(repr(choice) for choice in choices) + (" or None" if allow_none else "")
        _fail(name, expected, value)
    return value


def _describe(kind, minimum, maximum, exclusive_minimum=False, exclusive_maximum=False, allow_none=False):
    if minimum is not None and maximum is not None:
        left = "(" if exclusive_minimum else "["
        right = ")" if exclusive_maximum else "]"
        text = f"{kind} in {left}{minimum}, {maximum}{right}"
    elif minimum is not None:
        text = f"{kind} {'>' if exclusive_minimum else '>='} {minimum}"
    elif maximum is not None:
        text = f"{kind} {'<' if exclusive_maximum else '<='} {maximum}"
    else:
        text = kind
    return text + (" or None" if allow_none else "")
