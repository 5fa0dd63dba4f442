"""What every status section and health check shares: short timeouts, masked errors, guarded reads.

``reliable status`` and ``reliable health`` must answer quickly and never hang on a
backend that is down or unreachable (a Kubernetes probe gives up after a few seconds),
so they use clients of their own with :data:`TIMEOUT`-second timeouts and no retries,
not the per-process clients the worker uses (which wait). Nothing they print may hold a
secret: every error is passed through :func:`masked` before it is shown.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine

T = TypeVar("T")

#: Seconds to connect and to wait for each reply.
TIMEOUT = 2.0
#: Longest error text shown for a section or check.
MAX_REASON_CHARS = 300

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")


def secrets_of(urls: Iterable[Any]) -> tuple[str, ...]:
    """The passwords written in ``urls`` (non-strings and URLs without one are skipped)."""
    found: list[str] = []
    for url in urls:
        if not isinstance(url, str) or "://" not in url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.extend({password, unquote(password)})
    return tuple(sorted(set(found), key=len, reverse=True))


def masked(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the password of every URL in it, and each of ``secrets``, replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def reason(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One short line saying why something failed, with secrets masked.

    A SQLAlchemy error is shown as the driver's error it wraps (without the statement,
    whose parameters may hold data, and without the link to SQLAlchemy's docs).
    """
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    words = " ".join(str(exc).split()) or type(exc).__name__
    text = masked(f"{type(exc).__name__}: {words}", secrets)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def guarded(read: Callable[[], T], secrets: Iterable[str] = ()) -> T | dict[str, str]:
    """Run ``read``; on any error return ``{"unavailable": <reason>}`` instead of raising."""
    try:
        return read()
    except Exception as exc:
        return {"unavailable": reason(exc, secrets)}


def quick_redis(url: str) -> Redis:
    """A new ``redis.Redis`` for ``url`` that gives up after :data:`TIMEOUT` seconds, without retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0)
    )


def quick_engine(url: str) -> Engine:
    """A new engine for ``url`` without a pool, whose connections give up after :data:`TIMEOUT` seconds."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):
        connect_args["connect_timeout"] = max(1, round(TIMEOUT))
    elif parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = TIMEOUT
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Call ``fn``; return its result and the seconds it took."""
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started
