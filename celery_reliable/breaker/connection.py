"""The Redis clients of breakers built without one: lazily, once per process (and event loop).

A breaker stands in front of every call, so its client must fail fast: one-second
connect and read timeouts and a single retry, instead of redis-py's default of waiting
as long as the socket does. That is why these are not the clients of
:mod:`celery_reliable.clients` (shared with locks and claims, which wait). As there,
everything cached here is forgotten in a child right after a fork, and an asyncio client
belongs to the event loop that created it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

#: The Redis a breaker without ``client=`` or ``url=`` uses, unless ``REDIS_URL`` is set.
DEFAULT_URL = "redis://localhost:6379/0"
#: Seconds to connect and to wait for a reply.
TIMEOUT = 1.0

_lock = threading.Lock()
_sync: dict[str, Redis] = {}
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncRedis]] = weakref.WeakKeyDictionary()


def default_url() -> str:
    """``$REDIS_URL``, or :data:`DEFAULT_URL`."""
    return os.environ.get("REDIS_URL") or DEFAULT_URL


def _options() -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_connect_timeout": TIMEOUT, "socket_timeout": TIMEOUT, "retry": Retry(NoBackoff(), 1)}


def sync_client(url: str) -> Redis:
    """This process's ``redis.Redis`` for ``url``.

    Raises:
        ConfigurationError: for a URL redis-py cannot read.
    """
    found = _sync.get(url)
    if found is None:
        import redis

        with _lock:
            found = _sync.get(url)
            if found is None:
                try:
                    found = _sync[url] = redis.Redis.from_url(url, **_options())
                except ValueError as exc:
                    raise ConfigurationError("url", f"cannot use this Redis URL: {exc}") from exc
    return found


def async_client(url: str) -> AsyncRedis:
    """This process's ``redis.asyncio.Redis`` for ``url`` on the running event loop.

    Raises:
        ConfigurationError: for a URL redis-py cannot read.
        RuntimeError: outside a running event loop.
    """
    loop = asyncio.get_running_loop()
    per_loop = _async.get(loop)
    if per_loop is None:
        per_loop = _async[loop] = {}
    found = per_loop.get(url)
    if found is None:
        import redis.asyncio

        try:
            found = per_loop[url] = redis.asyncio.Redis.from_url(url, **_options())
        except ValueError as exc:
            raise ConfigurationError("url", f"cannot use this Redis URL: {exc}") from exc
    return found


def reset_after_fork() -> None:
    """Forget every client inherited from the parent process (never close its sockets)."""
    global _lock
    _lock = threading.Lock()
    _sync.clear()
    _async.clear()


def close_all() -> None:
    """Close this process's synchronous clients and forget the asyncio ones (tests, shutdown)."""
    for client in list(_sync.values()):
        client.close()
    _sync.clear()
    _async.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)
