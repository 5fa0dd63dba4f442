"""Distributed locks that are leases: fencing tokens, renewal, and loss detection."""

from __future__ import annotations

from .names import advisory_id
from .redis_lock import RedisLock

__all__ = ["RedisLock", "advisory_id"]
