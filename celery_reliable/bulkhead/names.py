"""Bulkhead names, sizes, leases and Redis keys, checked once at the edge."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from ..config import as_seconds
from ..errors import ConfigurationError
from ..ratelimit.base import check_count, check_text

#: Shortest lease accepted, in milliseconds: the heartbeat renews at a third of it.
MIN_LEASE_MS = 100
#: Longest lease accepted (one day), in milliseconds.
MAX_LEASE_MS = 86_400_000


def lease_ms(value: Any, option: str = "lease") -> int:
    """Normalise a lease (seconds as int or float, or a timedelta) to whole milliseconds.

    Raises:
        ConfigurationError: for a wrong type, a non-finite value, or a lease outside
            0.1 second to one day.
    """
    seconds = as_seconds(option, value)
    ms = round(seconds * 1000) if math.isfinite(seconds) else 0
    if not MIN_LEASE_MS <= ms <= MAX_LEASE_MS:
        raise ConfigurationError(option, f"must be between 0.1 second and one day, got {value!r}")
    return ms


def check_size(value: Any, option: str = "size") -> int:
    """Return ``value`` if it is a positive int (not a bool).

    Raises:
        ConfigurationError: otherwise.
    """
    return check_count(option, value)


def check_name(value: Any, option: str = "name") -> str:
    """Return ``value`` if it can name a bulkhead (a non-empty str up to 1024 UTF-8 bytes, no NUL).

    Raises:
        ConfigurationError: otherwise.
    """
    return check_text(option, value)


def slots_key(prefix: str, name: str) -> str:
    """The sorted set of a bulkhead's leases, ``<prefix>:bh:{<name>}``.

    The ``{...}`` is the Redis Cluster hash tag, so every key of one bulkhead lives in one
    slot and different bulkheads spread over the cluster; a name holding braces is
    written as its SHA-256.
    """
    tag = name
    if "{" in tag or "}" in tag:
        tag = "#" + hashlib.sha256(tag.encode("utf-8")).hexdigest()
    return f"{prefix}:bh:{{{tag}}}"


def hold_key(slots: str) -> str:
    """The key of the average hold length, beside (and in the cluster slot of) ``slots``."""
    return f"{slots}:hold"
