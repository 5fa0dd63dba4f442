"""Celery events for every reliability decision (shown by Flower and ``celery events``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .logs import decision_name, log_decision
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


def emit(
    task: Task,
    type_: str,
    enabled: bool,
    *,
    log_level: int = logging.INFO,
    log_note: str = "",
    log_fields: Mapping[str, Any] | None = None,
    **fields: Any,
) -> None:
    """Log a decision, count it (when metrics are on) and, when ``enabled``, send it as a Celery event.

    The log line (see :mod:`celery_reliable.logs`) carries the task's name, id and
    idempotency key and ``fields`` as structured values; ``log_fields`` are logged but not
    sent (an error's text), ``log_note`` is a sentence for people reading plain logs.
    Sending never breaks the task: a failure to publish the event is logged.
    """
    logged = {**fields, **(log_fields or {})}
    log_decision(task, decision_name(type_), logged, event=type_, level=log_level, note=log_note)
    count(task.name, type_, fields)
    if not enabled:
        return
    try:
        task.send_event(type_, retry=False, **fields)
    except Exception as exc:  # an event is a hint; the task's outcome does not hang on it
        logger.warning("could not send %s event: %r", type_, exc)
