"""``@circuit_breaker``: a shared breaker around a plain or async function.

::

    @circuit_breaker(failure_threshold=5, recovery_timeout=30)
    @retry(max_attempts=3, base_delay=1.0)
    async def call_external_api(): ...

Put the breaker *outside* ``@retry`` (above it): an open circuit then refuses the call
before any attempt, and the breaker sees one outcome per call, after the retries.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..errors import UnknownOptionError
from .breaker import CircuitBreaker

F = TypeVar("F", bound=Callable[..., Any])


@overload
def circuit_breaker(name: F, /) -> F: ...


@overload
def circuit_breaker(name: str | None = None, /, client: Any = None, **options: Any) -> Callable[[F], F]: ...


def circuit_breaker(name: Any = None, /, client: Any = None, **options: Any) -> Any:
    """Guard a function (sync or async) with a :class:`~.breaker.CircuitBreaker`.

    A refused call raises :class:`~celery_reliable.errors.CircuitOpen` without calling
    the function. The wrapper's ``breaker`` attribute is the breaker (``state()``,
    ``reset()``).

    Args:
        name: the breaker's name; default the function's ``module.qualname``, so every
            process running this code shares one breaker. ``@circuit_breaker`` with no
            parentheses uses every default.
        client: ``redis.Redis`` for a plain function, ``redis.asyncio.Redis`` for an async
            one; default per-process clients for ``url`` (``$REDIS_URL``, else
            ``redis://localhost:6379/0``).
        options: the other :class:`~.breaker.CircuitBreaker` parameters
            (``failure_threshold``, ``recovery_timeout``, ``window``, ``url``, ...).

    Returns:
        The decorated function, or a decorator.

    Raises:
        ConfigurationError: for a wrong option, at once (before decorating).
        UnknownOptionError: for an option ``CircuitBreaker`` does not take.
    """
    if callable(name):
        return circuit_breaker()(name)
    known = [p for p in inspect.signature(CircuitBreaker).parameters if p not in ("name", "client")]
    for option in options:
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownOptionError(option, f"unknown circuit breaker option{hint}")
    CircuitBreaker(name or "check", client, **options)  # a wrong value fails here, not at the first call

    def decorate(fn: F) -> F:
        label = name if name is not None else f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
        return CircuitBreaker(label, client, **options)(fn)

    return decorate
