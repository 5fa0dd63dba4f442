"""Singleton tasks: the lock options of ReliableTask, checked at declaration and taken in the worker.

The lock is held only while the body runs: taken before the idempotency claim, released
after the result is stored, on success, failure and retry alike, renewed by the
heartbeat meanwhile, and left to expire after ``lock_ttl`` if the worker dies. When the
lock is busy the task is deferred (parked until the holder's lease runs out, or woken
as soon as the holder releases), skipped, or failed: the task's ``on_locked`` choice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import LOCK_BACKENDS
from ..errors import ConfigurationError, IdempotencyKeyError, LockError
from ..idempotency.keys import KeyBuilder
from .names import MAX_NAME_BYTES, ttl_ms

if TYPE_CHECKING:
    from ..config import ReliableConfig
    from ..runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: What a busy lock does to a task.
ON_LOCKED = ("defer", "skip", "fail")
#: The lock options of ReliableTask.
LOCK_OPTIONS = ("singleton", "lock_key", "lock_ttl", "lock_backend", "on_locked")

#: The lock held by the execution running in this context.
current_lock: ContextVar[Any] = ContextVar("celery_reliable_lock", default=None)


@dataclass(frozen=True)
class LockSpec:
    """The lock options of one task class, checked."""

    key: KeyBuilder | None  # None: the task's name (one body at a time, whatever the arguments)
    ttl_ms: int | None  # None: reliable_lock_ttl
    backend: str | None  # None: reliable_lock_backend
    on_locked: str

    def name(self, task_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The lock name of one call (hashed when it could not name a lock as given).

        Raises:
            LockError: when the call does not fit the ``lock_key`` template.
        """
        if self.key is None:
            return task_name
        try:
            name = self.key.build(args, kwargs)
        except IdempotencyKeyError as exc:
            raise LockError(task_name, str(exc)) from exc
        raw = name.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_NAME_BYTES or "\x00" in name or _has_surrogate(name):
            return f"{task_name[:120]}#{hashlib.sha256(raw).hexdigest()}"
        return name


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def compile_lock(cls: type, signature: Any) -> LockSpec | None:
    """Build the lock spec of a task class from its options.

    Raises:
        ConfigurationError: for a wrong value, or lock options without a lock.
    """
    singleton = getattr(cls, "singleton", False)
    lock_key = getattr(cls, "lock_key", None)
    if not isinstance(singleton, bool):
        raise ConfigurationError("singleton", f"expected True or False, got {type(singleton).__name__} {singleton!r}")
    if not singleton and lock_key is None:
        for option in ("lock_ttl", "lock_backend", "on_locked"):
            if getattr(cls, option, None) is not None:
                raise ConfigurationError(option, "has no effect without singleton=True or lock_key=...")
        return None
    key = None
    if lock_key is not None:
        if lock_key is True or not (isinstance(lock_key, str) or callable(lock_key)):
            raise ConfigurationError(
                "lock_key", f"expected a template string or a callable, got {type(lock_key).__name__} {lock_key!r}"
            )
        key = KeyBuilder(lock_key, signature, option="lock_key")
        key.validate()
    raw_ttl = getattr(cls, "lock_ttl", None)
    spec_ttl = None if raw_ttl is None else ttl_ms(raw_ttl, "lock_ttl")
    if spec_ttl is not None and spec_ttl < 100:
        raise ConfigurationError("lock_ttl", f"must be at least 0.1 s (it is renewed every third), got {raw_ttl!r}")
    backend = getattr(cls, "lock_backend", None)
    if backend is not None and backend not in LOCK_BACKENDS:
        choices = ", ".join(map(repr, LOCK_BACKENDS))
        raise ConfigurationError("lock_backend", f"expected one of {choices}, got {backend!r}")
    on_locked = getattr(cls, "on_locked", None) or "defer"
    if on_locked not in ON_LOCKED:
        raise ConfigurationError("on_locked", f"expected one of {', '.join(map(repr, ON_LOCKED))}, got {on_locked!r}")
    return LockSpec(key, spec_ttl, backend, on_locked)


def make_lock(rt: Runtime, spec: LockSpec, name: str) -> Any:
    """Build the lock object of one execution, on the spec's backend.

    Raises:
        ConfigurationError: when the backend lacks its settings.
    """
    cfg = rt.config
    seconds = (spec.ttl_ms or cfg.lock_ttl_ms) / 1000.0
    backend = spec.backend or cfg.lock_backend
    if backend == "redis":
        from .redis_lock import RedisLock

        fence_db = rt.engine() if rt.has_database else None
        return RedisLock(rt.redis, name, seconds, blocking=False, fence_db=fence_db, prefix=cfg.key_prefix)
    if backend == "redlock":
        from ..clients import fail_fast_redis
        from .redlock import Redlock

        if not cfg.redlock_urls:
            raise ConfigurationError(
                "reliable_redlock_urls", "lock_backend='redlock' needs the URLs of its nodes (3 or 5 independent Redis)"
            )
        clients = [fail_fast_redis(url) for url in cfg.redlock_urls]
        return Redlock(clients, name, seconds, blocking=False, prefix=cfg.key_prefix)
    from .advisory import PostgresAdvisoryLock

    if not rt.has_database:
        raise ConfigurationError("reliable_database_url", "lock_backend='postgres' needs a PostgreSQL database")
    return PostgresAdvisoryLock(rt.engine(), name, blocking=False)


def check_backends(tasks: Mapping[str, Any], cfg: ReliableConfig) -> None:
    """Check, at worker start, that every singleton task's lock backend has its settings.

    Raises:
        ConfigurationError: naming the missing setting and the task that needs it.
    """
    for name, task in sorted(tasks.items()):
        spec: LockSpec | None = getattr(task, "_reliable_lock", None)
        if spec is None:
            continue
        backend = spec.backend or cfg.lock_backend
        if backend == "redlock" and not cfg.redlock_urls:
            raise ConfigurationError(
                "reliable_redlock_urls", f"task {name} locks with lock_backend='redlock', which needs the nodes' URLs"
            )
        if backend == "postgres" and not cfg.database_url:
            raise ConfigurationError(
                "reliable_database_url", f"task {name} locks with lock_backend='postgres', which needs a database"
            )
