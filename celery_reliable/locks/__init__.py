"""Distributed locks that are leases: fencing tokens, renewal, and loss detection.

- :class:`RedisLock`: one Redis node; ``with`` and ``async with``.
- :class:`Redlock`: a quorum of independent Redis nodes.
- :class:`PostgresAdvisoryLock`: a PostgreSQL advisory lock (session or transaction).
- :func:`fenced_update`, :func:`fenced_upsert`, :func:`fenced_set`: the resource side,
  refusing writes that carry an older fencing token than the last one accepted.
"""

from __future__ import annotations

from .advisory import PostgresAdvisoryLock
from .fencing import fenced_set, fenced_update, fenced_upsert
from .names import advisory_id
from .redis_lock import RedisLock
from .redlock import Redlock

__all__ = [
    "PostgresAdvisoryLock",
    "RedisLock",
    "Redlock",
    "advisory_id",
    "fenced_set",
    "fenced_update",
    "fenced_upsert",
]
