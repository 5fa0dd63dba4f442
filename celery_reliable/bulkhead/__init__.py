"""Bulkheads: cluster-wide concurrency caps as leases in Redis, and queue depth at the door.

- :class:`Bulkhead`: at most ``size`` holders at once across every worker, one sorted
  set ``<prefix>:bh:{<name>}`` of owner token to lease expiry on the Redis server's
  clock. ``try_acquire`` / ``release`` / ``renew`` are one Lua script and one round trip
  each; expired leases (dead holders) are dropped by the next acquire. ``with bulkhead:``
  and ``async with bulkhead:`` hold a slot for a block, renewed by the heartbeat, and
  raise :class:`~celery_reliable.errors.BulkheadFull` when full.
- :func:`tier_bulkheads` / :func:`check_tiers`: one bulkhead per tier from a mapping
  (``{"critical": 50, "standard": 20, "optional": 10}``); :func:`bulkhead_for` resolves a
  task's ``bulkhead=`` option; :func:`check_on_full` its choice when full.
- :func:`queue_depth` / :func:`check_queue_depth`: messages waiting in a Redis-broker
  or RabbitMQ queue, cached briefly, and :class:`~celery_reliable.errors.QueueFull`
  beyond a ``max_queue_depth``.

Example::

    critical = Bulkhead("critical", 50, lease=30, client=redis_client)
    admission = critical.try_acquire()
    if not admission:
        defer(admission.retry_after)
    else:
        try:
            ...
        finally:
            critical.release(admission.slot)
"""

from __future__ import annotations

from .bulkhead import Bulkhead
from .holding import Holding
from .policy import ON_FULL_CHOICES, OnFull, check_on_full
from .queue_depth import DepthCache, check_queue_depth, queue_depth, read_depth
from .slot import Admission, Slot
from .tiers import DEFAULT_TIERS, bulkhead_for, check_tiers, tier_bulkheads

__all__ = [
    "DEFAULT_TIERS",
    "ON_FULL_CHOICES",
    "Admission",
    "Bulkhead",
    "DepthCache",
    "Holding",
    "OnFull",
    "Slot",
    "bulkhead_for",
    "check_on_full",
    "check_queue_depth",
    "check_tiers",
    "queue_depth",
    "read_depth",
    "tier_bulkheads",
]
