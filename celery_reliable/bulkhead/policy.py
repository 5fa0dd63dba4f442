"""What a task does when its bulkhead is full: defer, reject, or call a fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from ..errors import ConfigurationError

#: ``"defer"``: park the task until a slot is likely free (no worker slot held, no retry
#: spent); ``"reject"``: dead-letter it; a callable: return what it returns, called with
#: the task's arguments, as the task's result.
OnFull: TypeAlias = Literal["defer", "reject"] | Callable[..., Any]

#: The named choices.
ON_FULL_CHOICES = ("defer", "reject")


def check_on_full(value: object, option: str = "bulkhead_on_full") -> OnFull:
    """Return ``value`` if it is ``"defer"``, ``"reject"`` or a callable (the fallback).

    Raises:
        ConfigurationError: otherwise.
    """
    if callable(value):
        return value
    if value == "defer":
        return "defer"
    if value == "reject":
        return "reject"
    raise ConfigurationError(
        option, f"expected 'defer', 'reject' or a fallback callable taking the task's arguments, got {value!r}"
    )
