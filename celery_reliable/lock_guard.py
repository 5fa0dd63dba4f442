"""Take and give back a singleton task's lock around one execution in a worker."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .admission import Ask, Release
from .errors import LockNotAcquired
from .events import emit
from .locks.redis_lock import _HOST, WAKE_TTL_MS, RedisLock, new_owner
from .locks.task_lock import LockSpec, make_lock
from .scripts import script_for

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: Returned by :func:`take` when the task was skipped because its lock was busy.
SKIPPED = object()


def prepare(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime) -> Ask | None:
    """The lock's question for the admission round trip, or None.

    Only the ``redis`` backend joins it; Redlock and PostgreSQL locks ask on their own.
    """
    spec: LockSpec | None = task._reliable_lock
    if spec is None or (spec.backend or rt.config.lock_backend) != "redis":
        return None
    name = spec.name(task.name, args, kwargs)
    lock = make_lock(rt, spec, name)
    owner = new_owner()
    keys, lock_args = lock.acquire_request(owner)
    return Ask("lock", "lock_acquire", keys, lock_args, {"lock": lock, "name": name, "owner": owner})


def take(
    task: Task,
    req: Context,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rt: Runtime,
    spec: LockSpec,
    ask: Ask | None = None,
) -> Any:
    """Acquire the task's lock without waiting, or act on ``on_locked``.

    ``ask``: the lock's question, answered in the admission round trip; without an
    answer the lock is asked for here.

    Returns:
        the held lock, or :data:`SKIPPED`.

    Raises:
        Ignore: the task was deferred (``on_locked="defer"``).
        LockNotAcquired: ``on_locked="fail"``, or an eager call that cannot be deferred.
    """
    if ask is not None:  # unanswered: asked here with the admission's owner (a lost reply is its own hold)
        name, lock = ask.state["name"], ask.state["lock"]
        acquired = lock.acquire_answered(ask.state["owner"], ask.take() if ask.answered else None)
    else:
        name = spec.name(task.name, args, kwargs)
        lock = make_lock(rt, spec, name)
        acquired = lock.acquire(blocking=False)
    if acquired:
        req.fencing_token = lock.token
        req.lock_name = name
        return lock
    retry_after: float | None = getattr(lock, "retry_after", None)
    cfg = rt.config
    if spec.on_locked == "skip":
        emit(task, "task-lock-skipped", cfg.send_events, lock=name, retry_after=retry_after)
        return SKIPPED
    if spec.on_locked == "fail" or req.is_eager:
        raise LockNotAcquired(name, "held by another execution", retry_after)
    from .execution import defer

    delay_ms = int(retry_after * 1000) + 10 if retry_after else cfg.busy_delay_ms
    defer(task, req, args, kwargs, rt, delay_ms, reason="locked", wake=lock)


def release_of(task: Task, rt: Runtime, lock: Any) -> Release | None:
    """The lock's give-back for the completion round trip (a ``redis`` lock on the app's Redis), or None."""
    if not isinstance(lock, RedisLock) or lock.client is not rt.redis:
        return None

    def then(reply: Any) -> None:
        if isinstance(reply, Exception):
            _not_released(task, lock, reply)
        else:
            _released(task, rt, lock, lock.release_answered(reply))

    return Release("lock", "lock_release", lock.release_request, then)


def give_back(task: Task, rt: Runtime, lock: Any) -> None:
    """Release the lock after the body; a lock lost meanwhile is logged and sent as an event."""
    try:
        released = lock.release()
    except Exception as exc:  # the lease runs out by itself; the task's outcome stands
        _not_released(task, lock, exc)
        return
    _released(task, rt, lock, released)


def _not_released(task: Task, lock: Any, exc: BaseException) -> None:
    logger.warning("%s[%s]: could not release lock %r: %r", task.name, task.request.id, lock.name, exc)


def _released(task: Task, rt: Runtime, lock: Any, released: bool) -> None:
    """Act on a release: a lock lost while the body ran is announced; a waiting task is woken."""
    if not released:
        emit(
            task,
            "task-lock-lost",
            rt.config.send_events,
            log_level=logging.WARNING,
            log_note="the lock was lost while the body ran (its lease ran out or Redis lost it); another execution "
            "may have overlapped, and writes fenced with its token are refused after the takeover",
            log_fields={"fencing_token": task.request.get("fencing_token")},
            lock=lock.name,
        )
    elif getattr(lock, "had_waiters", False):
        try:
            rt.deferred().wake(lock.key)
        except Exception as exc:  # the parked task still comes back at its due time
            logger.warning("%s: could not wake a task parked for lock %r: %r", task.request.id, lock.name, exc)


def release_after_kill(task: Task, args: Any, kwargs: Any, why: str) -> None:
    """Free the lock of an execution the worker is killing (revoke with terminate, hard time limit).

    Runs in the worker's main process. The lock is released as soon as the process that
    holds it is gone, never before (so two bodies cannot overlap), by a daemon thread
    that gives up after the lease, which frees the lock anyway. Only the ``redis``
    backend needs this: a PostgreSQL advisory lock dies with its session, and a Redlock
    lease runs out.
    """
    spec: LockSpec | None = getattr(task, "_reliable_lock", None)
    if spec is None:
        return
    from .runtime import runtime

    rt = runtime(task.app)
    if (spec.backend or rt.config.lock_backend) != "redis":
        return
    try:
        lock = make_lock(rt, spec, spec.name(task.name, tuple(args or ()), dict(kwargs or {})))
    except Exception as exc:
        logger.warning("%s: cannot name the lock of a killed execution: %r", task.name, exc)
        return
    threading.Thread(target=_release_when_gone, args=(rt, lock, why), name="reliable-lock-reaper", daemon=True).start()


def _release_when_gone(rt: Runtime, lock: Any, why: str) -> None:
    deadline = time.monotonic() + lock.ttl_ms / 1000.0
    while time.monotonic() < deadline:
        try:
            owner = rt.redis.get(lock.key)
            if owner is None:
                return
            text = owner.decode("utf-8", "replace") if isinstance(owner, bytes) else str(owner)
            host, _, rest = text.partition(":")  # RedisLock owners are "<host>:<pid>:<thread>:<uuid>"
            pid = int(rest.split(":", 1)[0])
            if host != _HOST:
                return
            if not _alive(pid):
                status = script_for(rt.redis, "lock_release")(keys=lock._release_keys, args=[owner, WAKE_TTL_MS])
                if int(status):
                    logger.info("released lock %r of a killed execution (%s)", lock.name, why)
                if int(status) == 2:
                    rt.deferred().wake(lock.key)
                return
        except Exception as exc:  # the lease still runs out by itself
            logger.warning("could not release lock %r after %s: %r", lock.name, why, exc)
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose: it runs no more code
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
