"""Argument checks shared by the reference model builders: each raises a ValueError naming the argument."""

import numbers


def check_shape(name, value, rank=None):
    """`value` as a tuple of positive ints (None allowed nowhere); `rank` fixes its length if given."""
    try:
        shape = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a tuple of positive ints. Received: {name}={value!r}") from None
    if not shape or not all(_is_int(d) and d >= 1 for d in shape) or (rank is not None and len(shape) not in rank):
        expected = "" if rank is None else f" of length {' or '.join(str(r) for r in rank)}"
        raise ValueError(f"`{name}` must be a tuple of positive ints{expected}. Received: {name}={value!r}")
    return tuple(int(d) for d in shape)


def check_positive_int(name, value, minimum=1, maximum=None):
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"`{name}` must be an int {bound}. Received: {name}={value!r}")
    return int(value)


def check_positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite float > 0. Received: {name}={value!r}")
    return float(value)


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_name(name, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a non-empty string. Received: {name}={value!r}")
    return value


def scaled(channels, width):
    """`channels * width`, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
