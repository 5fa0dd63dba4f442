"""Celery events for every reliability decision (shown by Flower and ``celery events``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .metrics.counters import count

if TYPE_CHECKING:
    from celery import Task

logger = logging.getLogger("celery_reliable")

#: The event types we send.
EVENT_TYPES = (
    "reliable-circuit-changed",
    "task-bulkhead-full",
    "task-circuit-open",
    "task-dead-lettered",
    "task-deduplicated",
    "task-deferred",
    "task-lock-lost",
    "task-lock-skipped",
    "task-rate-limited",
)


def emit(task: Task, type_: str, enabled: bool, **fields: Any) -> None:
    """Log a decision, count it (when metrics are on) and, when ``enabled``, send it as a Celery event.

    Sending never breaks the task: a failure to publish the event is logged.
    """
    req = task.request
    logger.info("%s %s[%s] %s", type_, task.name, req.id, " ".join(f"{k}={v}" for k, v in fields.items()))
    count(task.name, type_, fields)
    if not enabled:
        return
    try:
        task.send_event(type_, retry=False, **fields)
    except Exception as exc:  # an event is a hint; the task's outcome does not hang on it
        logger.warning("could not send %s event: %r", type_, exc)
