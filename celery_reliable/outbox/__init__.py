"""The transactional outbox: publish a task if and only if the business transaction commits.

::

    with Session(engine) as session, session.begin():
        session.add(order)
        enqueue(session, send_receipt.s(order.id), ordering_key=f"order:{order.id}")
    # committed: a relay publishes the task (at least once, task id = the returned id)
    # rolled back: no row, no message

- :func:`enqueue` / :func:`aenqueue` write a row in the caller's transaction (:mod:`.enqueue`);
- :func:`relay_outbox` claims, publishes and marks rows (:mod:`.relay`); beat runs it every
  ``reliable_outbox_interval`` as ``celery_reliable.relay_outbox``;
- :class:`OutboxListener` relays on commit in listen mode (:mod:`.listen`);
- :func:`cleanup_published`, :func:`requeue_dead`, :func:`discard_dead`,
  :func:`outbox_status` operate it (:mod:`.admin`).

The table is ``reliable_outbox`` (migration ``0005_outbox``, :mod:`.model`).
"""

from __future__ import annotations

from .admin import cleanup_published, discard_dead, outbox_status, requeue_dead
from .enqueue import aenqueue, enqueue
from .listen import OutboxListener
from .model import CHANNEL, DEAD, PENDING, PUBLISHED, outbox
from .relay import OutboxMessage, RelayStats, publish_message, relay_outbox

__all__ = [
    "CHANNEL",
    "DEAD",
    "PENDING",
    "PUBLISHED",
    "OutboxListener",
    "OutboxMessage",
    "RelayStats",
    "aenqueue",
    "cleanup_published",
    "discard_dead",
    "enqueue",
    "outbox",
    "outbox_status",
    "publish_message",
    "relay_outbox",
    "requeue_dead",
]
