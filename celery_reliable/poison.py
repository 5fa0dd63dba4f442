"""Count the redeliveries of each task id, so a message that kills its worker stops looping.

Only a redelivery is counted (the broker marks it: RabbitMQ natively, kombu's Redis
transport when it restores a message): a first delivery costs nothing. A task id whose
worker died on every delivery is redelivered again and again under ``task_acks_late`` and
``task_reject_on_worker_lost``; past ``reliable_max_deliveries`` it is dead-lettered as
``poison`` instead of being run again. The counter of a task that finished is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

#: How long a redelivery counter lives after its last delivery.
COUNTER_TTL_MS = 7 * 86_400_000


def redelivered(request: Any) -> bool:
    """Whether the broker marked this delivery as a redelivery."""
    info = getattr(request, "delivery_info", None) or {}
    return bool(info.get("redelivered"))


def counter_key(prefix: str, task_id: str) -> str:
    """The Redis key counting the redeliveries of ``task_id``."""
    return f"{prefix}:deliveries:{{{task_id}}}"


def count(client: Redis, prefix: str, task_id: str) -> int:
    """Count one more delivery of ``task_id`` (one round trip).

    Returns:
        how many times the task has now been delivered, this one included.
    """
    pipe = client.pipeline(transaction=False)
    key = counter_key(prefix, task_id)
    pipe.incr(key)
    pipe.pexpire(key, COUNTER_TTL_MS)
    redeliveries, _ = pipe.execute()
    return int(redeliveries) + 1


def forget(client: Redis, prefix: str, task_id: str) -> None:
    """Drop the counter of a task that finished (ran to success or to a handled failure)."""
    client.delete(counter_key(prefix, task_id))
