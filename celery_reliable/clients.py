"""Redis clients and SQLAlchemy engines, created lazily once per process.

Prefork workers fork after the parent may have used its clients; a child must never
talk through its parent's sockets. Everything cached here is dropped in the child right
after a fork (``os.register_at_fork``) and created again on first use.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, TransactionError
from .scripts import Scripts

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine

_lock = threading.Lock()
_redis: dict[str, tuple[Redis, Scripts]] = {}
_engines: dict[str, Engine] = {}
_fail_fast: dict[str, Redis] = {}


def redis_and_scripts(url: str) -> tuple[Redis, Scripts]:
    """Return this process's client for ``url`` and its registered scripts."""
    found = _redis.get(url)
    if found is None:
        import redis

        with _lock:
            found = _redis.get(url)
            if found is None:
                try:
                    client = redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
                except ValueError as exc:
                    raise ConfigurationError("reliable_redis_url", f"cannot use {_safe(url)!r}: {exc}") from exc
                found = (client, Scripts(client))
                _redis[url] = found
    return found


def fail_fast_redis(url: str) -> Redis:
    """Return this process's fail-fast client for ``url``, for a Redlock node.

    A dead node must cost a Redlock attempt little of its validity: 0.2 s timeouts and
    one retry without backoff (redis-py's default retries for seconds).
    """
    found = _fail_fast.get(url)
    if found is None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        with _lock:
            found = _fail_fast.get(url)
            if found is None:
                try:
                    found = redis.Redis.from_url(
                        url, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 1)
                    )
                except ValueError as exc:
                    raise ConfigurationError("reliable_redlock_urls", f"cannot use {_safe(url)!r}: {exc}") from exc
                _fail_fast[url] = found
    return found


def engine_for(url: str | None) -> Engine:
    """Return this process's SQLAlchemy engine for ``url``.

    Raises:
        TransactionError: when no database is configured.
    """
    if not url:
        raise TransactionError(
            "no database configured: set app.conf.reliable_database_url "
            "(for example 'postgresql+psycopg://user@host/db') to use self.transaction()"
        )
    engine = _engines.get(url)
    if engine is None:
        from sqlalchemy import create_engine

        with _lock:
            engine = _engines.get(url)
            if engine is None:
                kwargs: dict[str, Any] = {"pool_pre_ping": True}
                if url.startswith("sqlite"):
                    kwargs = {"connect_args": {"timeout": 30}}
                try:
                    engine = create_engine(url, **kwargs)
                except Exception as exc:
                    raise ConfigurationError("reliable_database_url", f"cannot use {_safe(url)!r}: {exc}") from exc
                if url.startswith("sqlite"):
                    _sqlite_wal(engine)
                _engines[url] = engine
    return engine


def _sqlite_wal(engine: Engine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - sqlite only
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()


def _safe(url: str) -> str:
    """``url`` with any password masked, for error messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def reset_after_fork() -> None:
    """Forget every client and engine inherited from the parent process."""
    global _lock
    _lock = threading.Lock()
    _redis.clear()
    _fail_fast.clear()
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


def close_all() -> None:
    """Close this process's clients and engines (tests and shutdown)."""
    for client, _ in list(_redis.values()):
        client.close()
    _redis.clear()
    for node in list(_fail_fast.values()):
        node.close()
    _fail_fast.clear()
    for engine in list(_engines.values()):
        engine.dispose()
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)
