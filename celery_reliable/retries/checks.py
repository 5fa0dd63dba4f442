"""Checks of the numbers the retry machinery takes, each failing with the parameter's name."""

from __future__ import annotations

import math

from ..config import as_seconds
from ..errors import ConfigurationError


def seconds_ms(name: str, value: object) -> int:
    """Normalise a positive duration (seconds as int or float, or a timedelta) to milliseconds.

    Raises:
        ConfigurationError: for a wrong type, a non-positive or non-finite value, or one
            below a millisecond.
    """
    seconds = as_seconds(name, value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(name, f"must be a positive, finite number of seconds, got {value!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ConfigurationError(name, f"must be at least one millisecond, got {value!r}")
    return ms


def count(name: str, value: object, least: int) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``least``.

    Raises:
        ConfigurationError: otherwise.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(name, f"expected an int, got {type(value).__name__} {value!r}")
    if value < least:
        raise ConfigurationError(name, f"must be at least {least}, got {value}")
    return value


def number(name: str, value: object, least: float, *, inclusive: bool = True, most: float | None = None) -> float:
    """Return ``value`` as a float if it is a finite number within the bounds.

    Args:
        name: the parameter, for the message.
        value: what was passed.
        least: the lower bound.
        inclusive: whether ``least`` itself is allowed.
        most: the upper bound (inclusive), if any.

    Raises:
        ConfigurationError: for a wrong type, a non-finite value or one out of bounds.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigurationError(name, f"expected a number, got {type(value).__name__} {value!r}")
    low_ok = value >= least if inclusive else value > least
    if not math.isfinite(value) or not low_ok or (most is not None and value > most):
        low = f"[{least}" if inclusive else f"({least}"
        high = f"{most}]" if most is not None else "inf)"
        raise ConfigurationError(name, f"must be a finite number in {low}, {high}, got {value!r}")
    return float(value)
