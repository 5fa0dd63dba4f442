"""The errors we know: :data:`PERMANENT` ones no retry can fix, :data:`TRANSIENT` ones that pass.

Errors of optional packages (redis, SQLAlchemy, psycopg, requests, httpx, urllib3,
aiohttp) are recognised by the names of the classes in the exception's MRO, so nothing
here imports them. Both sets are plain conditions: extend them with ``|``, narrow them
with ``& ~``::

    RetryPolicy(dont_retry_on=PERMANENT | on(InsufficientFunds))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket

from celery.exceptions import NotRegistered

from ..errors import (
    ConfigurationError,
    IdempotencyKeyError,
    IdempotencyKeyMismatch,
    MessageTooLarge,
    SerializationError,
    TransactionError,
)
from .conditions import Condition, http_status, on


def named(*names: str) -> Condition:
    """Match exceptions with a class in their MRO of one of ``names``, without importing it.

    Args:
        names: ``"module.QualName"`` (as ``cls.__module__`` and ``cls.__qualname__`` spell
            it, e.g. ``"redis.exceptions.ConnectionError"``), or a bare class name
            (``"OperationalError"``) that matches in any module.

    Raises:
        ConfigurationError: for no name or a name that is not a non-empty string.
    """
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError("names", f"expected class names, got {names!r}")
    wanted = frozenset(names)

    def test(exc: BaseException) -> bool:
        return any(
            cls.__name__ in wanted or f"{cls.__module__}.{cls.__qualname__}" in wanted for cls in type(exc).__mro__
        )

    return Condition(test, f"named({', '.join(sorted(wanted))})")


#: errno values of OSErrors that mean "the network, not the request" (not all exist everywhere).
NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH",
        "ENETUNREACH", "ENETDOWN", "ENETRESET", "EHOSTDOWN", "EADDRNOTAVAIL",
    )
    if hasattr(errno, name)
)  # fmt: skip


def _network_oserror(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS


#: Programming errors and our own "this call can never work" errors, HTTP client errors
#: that a retry cannot change (400, 401, 403, 404, 405, 410, 422), and Redis refusing our
#: credentials. Never retried by default.
PERMANENT: Condition = (
    on(TypeError, AttributeError, NameError, NotImplementedError, AssertionError, NotRegistered)
    | on(ConfigurationError, SerializationError, IdempotencyKeyMismatch, IdempotencyKeyError)
    | on(MessageTooLarge, TransactionError)
    | http_status(400, 401, 403, 404, 405, 410, 422)
    | named(
        "redis.exceptions.AuthenticationError",
        "redis.exceptions.AuthorizationError",
        "redis.exceptions.NoPermissionError",
    )
)

#: Errors of the network or of an overloaded or failing-over service: connection and
#: timeout errors (builtin, asyncio, socket, redis, requests, httpx, urllib3, aiohttp),
#: OSErrors with a network errno, DNS failures, PEP 249 ``OperationalError`` (SQLAlchemy,
#: psycopg, kombu: lost connections, deadlocks, serialization failures) and HTTP 408,
#: 425, 429, 500, 502, 503, 504. They count towards a circuit breaker by default.
TRANSIENT: Condition = (
    on(ConnectionError, TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError, socket.gaierror)
    | Condition(_network_oserror, "network errno")
    | http_status(408, 425, 429, 500, 502, 503, 504)
    | named(
        "OperationalError",
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "redis.exceptions.ClusterDownError",
        "redis.exceptions.TryAgainError",
        "redis.exceptions.ReadOnlyError",
        "sqlalchemy.exc.DisconnectionError",
        "sqlalchemy.exc.TimeoutError",
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "requests.exceptions.ChunkedEncodingError",
        "httpx.TransportError",
        "urllib3.exceptions.TimeoutError",
        "urllib3.exceptions.ProtocolError",
        "aiohttp.client_exceptions.ClientConnectionError",
        "aiohttp.client_exceptions.ServerTimeoutError",
    )
)
