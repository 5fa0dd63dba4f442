"""Conditions on exceptions that compose with ``|``, ``&`` and ``~`` (as tenacity's do).

A :class:`Condition` is a callable ``exc -> bool``::

    on(ConnectionError) | http_status(429, 503)        # either
    on(OSError) & ~on(FileNotFoundError)                # both
    message_matches(r"deadlock detected") | TRANSIENT   # with the defaults of known.py

The built-in conditions never raise: an attribute that is missing, or that raises when
read (httpx's ``RequestError.request`` does), simply does not match. A predicate given to
:func:`when` must not raise either; its exception would replace the one being classified.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Union

from ..errors import ConfigurationError

#: What :func:`as_condition` accepts: a condition, an exception class, a tuple of them,
#: or a predicate.
ConditionLike = Union[
    "Condition", type[BaseException], tuple[type[BaseException], ...], Callable[[BaseException], bool]
]


class Condition:
    """A named test on an exception, composable with ``|`` (or), ``&`` (and), ``~`` (not).

    Args:
        test: ``exc -> bool``.
        description: what the condition means, shown by ``repr()``.
    """

    __slots__ = ("_test", "description")

    def __init__(self, test: Callable[[BaseException], bool], description: str) -> None:
        self._test = test
        self.description = description

    def __call__(self, exc: BaseException) -> bool:
        """Return whether ``exc`` meets the condition."""
        return bool(self._test(exc))

    def __or__(self, other: ConditionLike) -> Condition:
        right = as_condition(other, "other")
        return Condition(lambda exc: self(exc) or right(exc), f"({self.description} | {right.description})")

    def __and__(self, other: ConditionLike) -> Condition:
        right = as_condition(other, "other")
        return Condition(lambda exc: self(exc) and right(exc), f"({self.description} & {right.description})")

    def __ror__(self, other: ConditionLike) -> Condition:
        return as_condition(other, "other") | self

    def __rand__(self, other: ConditionLike) -> Condition:
        return as_condition(other, "other") & self

    def __invert__(self) -> Condition:
        return Condition(lambda exc: not self(exc), f"~{self.description}")

    def __repr__(self) -> str:
        return f"<Condition {self.description}>"


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def as_condition(value: object, name: str) -> Condition:
    """Turn a condition, an exception class, a tuple of classes or a predicate into a Condition.

    Args:
        value: what to convert; ``()`` means "no exception" (:data:`NOTHING`).
        name: the parameter it came from, for the error message.

    Returns:
        The condition.

    Raises:
        ConfigurationError: for anything else (an instance, a string, a list).
    """
    if isinstance(value, Condition):
        return value
    if value == ():
        return NOTHING
    if _is_exception_class(value) or (isinstance(value, tuple) and value and all(map(_is_exception_class, value))):
        classes = value if isinstance(value, tuple) else (value,)
        return on(*classes)
    if callable(value) and not isinstance(value, (type, tuple)):
        return when(value)
    raise ConfigurationError(
        name, f"expected a Condition, an exception class, a tuple of them or a predicate, got {value!r}"
    )


#: Matches no exception (``dont_retry_on=()`` or ``NOTHING``: nothing is permanent).
NOTHING = Condition(lambda exc: False, "nothing")


def on(*exception_types: type[BaseException]) -> Condition:
    """Match instances of any of ``exception_types`` (subclasses included).

    Raises:
        ConfigurationError: when given no class, or something that is not an exception class.
    """
    if not exception_types or not all(map(_is_exception_class, exception_types)):
        raise ConfigurationError("exception_types", f"expected exception classes, got {exception_types!r}")
    exception_types = tuple(dict.fromkeys(exception_types))  # asyncio.TimeoutError is TimeoutError on 3.11+
    names = ", ".join(t.__name__ for t in exception_types)
    return Condition(lambda exc: isinstance(exc, exception_types), f"on({names})")


def when(predicate: Callable[[BaseException], bool]) -> Condition:
    """Match the exceptions for which ``predicate(exc)`` is true."""
    label = getattr(predicate, "__name__", None) or repr(predicate)
    return Condition(predicate, f"when({label})")


def safe_getattr(obj: object, name: str) -> Any:
    """``getattr(obj, name, None)``, also ``None`` when reading the attribute raises."""
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises (httpx) is a missing attribute here
        return None


def _as_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, or ``None``.

    Reads ``exc.status_code``, ``exc.status``, then ``exc.response.status_code`` and
    ``exc.response.status``: this covers requests, httpx, aiohttp, urllib and most API
    clients without importing any of them.
    """
    for owner in (exc, safe_getattr(exc, "response")):
        if owner is None:
            continue
        for attr in ("status_code", "status"):
            status = _as_status(safe_getattr(owner, attr))
            if status is not None:
                return status
    return None


def http_status(*codes: int) -> Condition:
    """Match exceptions that carry one of the HTTP status ``codes`` (see :func:`status_of`).

    Raises:
        ConfigurationError: for no code, or a code outside 100..599.
    """
    if not codes or any(_as_status(c) is None for c in codes):
        raise ConfigurationError("codes", f"expected HTTP status codes (100..599), got {codes!r}")
    wanted = frozenset(codes)
    return Condition(lambda exc: status_of(exc) in wanted, f"http_status({', '.join(map(str, sorted(wanted)))})")


def message_matches(pattern: str | re.Pattern[str], flags: int = 0) -> Condition:
    """Match exceptions whose ``str()`` contains a match of the regular expression ``pattern``.

    Raises:
        ConfigurationError: for a pattern that does not compile.
    """
    try:
        regex = re.compile(pattern, flags)
    except (re.error, TypeError, ValueError) as exc:
        raise ConfigurationError("pattern", f"not a regular expression: {pattern!r} ({exc})") from exc

    def search(exc: BaseException) -> bool:
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not hide the error being classified
            return False
        return regex.search(text) is not None

    return Condition(search, f"message_matches({regex.pattern!r})")
