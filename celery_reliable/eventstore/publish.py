"""Publishing appended events through the transactional outbox.

Each event becomes one outbox message per subscriber task, written in the appending
transaction: the events reach the broker if and only if the append commits. The message
carries the event as a JSON object (:meth:`RecordedEvent.as_message`) in the keyword
argument ``event``; its ordering key is the stream id, so the relay publishes one
stream's events in version order. The message id is the event id (with one subscriber)
or ``"<event id>:<task name>"`` (with several: outbox message ids are unique); consumers
deduplicate on the event id in their inbox either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..outbox.enqueue import enqueue

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection

    from .events import RecordedEvent


def subscriber_names(publish: Any) -> list[str]:
    """Task names from ``publish``: a task, a task name, or a sequence of them.

    Raises:
        TypeError: anything else.
    """
    if publish is None:
        return []
    items = list(publish) if isinstance(publish, Sequence) and not isinstance(publish, str) else [publish]
    names = []
    for item in items:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"publish= takes tasks or task names, got {item!r}")
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"publish= names a task twice: {names}")
    return names


def publish_events(
    conn: Connection,
    recorded: Sequence[RecordedEvent],
    subscribers: Sequence[str],
    app: Celery | None,
    options: dict[str, Any],
) -> list[str]:
    """Write one outbox message per (event, subscriber) in ``conn``'s transaction; returns the message ids."""
    ids = []
    for event in recorded:
        for name in subscribers:
            message_id = event.event_id if len(subscribers) == 1 else f"{event.event_id}:{name}"
            ids.append(
                enqueue(
                    conn,
                    name,
                    kwargs={"event": event.as_message()},
                    ordering_key=event.stream_id,
                    app=app,
                    task_id=message_id,
                    **options,
                )
            )
    return ids
