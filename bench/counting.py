"""Exact client-side counts of Redis round trips and SQL work, per thread.

Counting is off until :func:`start` is called in a thread, and only that thread's
traffic is counted, so the deferred-set pump and heartbeat threads, and the broker and
result-backend connections (other ports), never pollute the figures.

* Redis: one ``Connection.send_packed_command`` call is one request on the wire, i.e.
  one round trip (a pipeline of two commands is one call; ``SCRIPT EXISTS`` that
  redis-py sends before a pipeline holding a script is another). Commands are counted
  by name from ``send_command`` (single commands) and ``pack_commands`` (pipelines).
* SQL (SQLAlchemy events): statements executed (SAVEPOINT/RELEASE included),
  transactions committed or rolled back, and pool checkouts that ran a pre-ping.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

_local = threading.local()
_installed = False


def _counter() -> Counter[str] | None:
    return getattr(_local, "counts", None)


def start() -> None:
    """Start counting in this thread (resets the counts)."""
    _local.counts = Counter()


def stop() -> Counter[str]:
    """Stop counting in this thread and return what was counted."""
    counts = _counter() or Counter()
    _local.counts = None
    return counts


def install(redis_port: int) -> None:
    """Patch redis-py and hook SQLAlchemy once per process; count Redis traffic to ``redis_port``."""
    global _installed
    if _installed:
        return
    _installed = True
    from redis.connection import AbstractConnection

    send_packed = AbstractConnection.send_packed_command
    send_one = AbstractConnection.send_command
    pack_many = AbstractConnection.pack_commands

    def mine(conn: Any) -> Counter[str] | None:
        c = _counter()
        return c if c is not None and getattr(conn, "port", None) == redis_port else None

    def name_of(arg: Any) -> str:
        return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()

    def counted_send_packed(self: Any, command: Any, check_health: bool = True) -> Any:
        c = mine(self)
        if c is not None:
            c["redis_round_trips"] += 1
        return send_packed(self, command, check_health)

    def counted_send_one(self: Any, *args: Any, **kwargs: Any) -> Any:
        c = mine(self)
        if c is not None and args:
            c[f"redis_cmd:{name_of(args[0])}"] += 1
        return send_one(self, *args, **kwargs)

    def counted_pack_many(self: Any, commands: Any) -> Any:
        commands = list(commands)
        c = mine(self)
        if c is not None:
            for cmd in commands:
                c[f"redis_cmd:{name_of(cmd[0])}"] += 1
        return pack_many(self, commands)

    AbstractConnection.send_packed_command = counted_send_packed  # type: ignore[method-assign]
    AbstractConnection.send_command = counted_send_one  # type: ignore[method-assign]
    AbstractConnection.pack_commands = counted_pack_many  # type: ignore[method-assign]
    _hook_sqlalchemy()


def _hook_sqlalchemy() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    def bump(name: str) -> None:
        c = _counter()
        if c is not None:
            c[name] += 1

    event.listen(Engine, "before_cursor_execute", lambda *a, **k: bump("sql_statements"))
    event.listen(Engine, "commit", lambda *a, **k: bump("sql_commits"))
    event.listen(Engine, "rollback", lambda *a, **k: bump("sql_rollbacks"))

    def on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        bump("sql_checkouts")
        if getattr(getattr(proxy, "_pool", None), "_pre_ping", False):
            bump("sql_pre_pings")

    event.listen(Pool, "checkout", on_checkout)


def redis_commands(counts: Counter[str]) -> dict[str, int]:
    """The per-command part of ``counts`` (``{"EVALSHA": 2, ...}``)."""
    return {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("redis_cmd:")}
