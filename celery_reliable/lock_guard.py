"""Take and give back a singleton task's lock around one execution in a worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import LockNotAcquired
from .events import emit
from .locks.task_lock import LockSpec, make_lock

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: Returned by :func:`take` when the task was skipped because its lock was busy.
SKIPPED = object()


def take(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, spec: LockSpec
) -> Any:
    """Acquire the task's lock without waiting, or act on ``on_locked``.

    Returns:
        the held lock, or :data:`SKIPPED`.

    Raises:
        Ignore: the task was deferred (``on_locked="defer"``).
        LockNotAcquired: ``on_locked="fail"``, or an eager call that cannot be deferred.
    """
    name = spec.name(task.name, args, kwargs)
    lock = make_lock(rt, spec, name)
    if lock.acquire(blocking=False):
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


def give_back(task: Task, rt: Runtime, lock: Any) -> None:
    """Release the lock after the body; a lock lost meanwhile is logged and sent as an event."""
    try:
        released = lock.release()
    except Exception as exc:  # the lease runs out by itself; the task's outcome stands
        logger.warning("%s[%s]: could not release lock %r: %r", task.name, task.request.id, lock.name, exc)
        return
    if not released:
        logger.warning(
            "%s[%s]: lock %r was lost while the body ran (its lease ran out or Redis lost it); another "
            "execution may have overlapped, and writes fenced with token %s are refused after the takeover",
            task.name,
            task.request.id,
            lock.name,
            task.request.get("fencing_token"),
        )
        emit(task, "task-lock-lost", rt.config.send_events, lock=lock.name)
    elif getattr(lock, "parked_waiters", False):
        try:
            rt.deferred().wake(lock.key)
        except Exception as exc:  # the parked task still comes back at its due time
            logger.warning("%s: could not wake a task parked for lock %r: %r", task.request.id, lock.name, exc)
