"""Lock names, lengths of leases, and the keys and ids derived from them.

A lock name is any non-empty ``str`` of at most :data:`MAX_NAME_BYTES` UTF-8 bytes, with
no NUL and no lone surrogate (they cannot be encoded, or mean something else to a
server). Unicode is welcome. The Redis key of a name is ``<prefix>:lock:{<name>}``; a
name holding ``{`` or ``}`` (which would change the Redis Cluster hash tag) is written
as its SHA-256 instead, so the lock's keys always share one slot.

The PostgreSQL advisory-lock id of a name is the first 8 bytes of the SHA-256 of its
UTF-8 bytes, read as a big-endian signed 64-bit integer: stable across processes,
machines and Python versions (never Python's ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
import math

from ..config import as_seconds
from ..errors import ConfigurationError

#: Longest lock name accepted, in UTF-8 bytes.
MAX_NAME_BYTES = 1024

#: Longest lease accepted (one day); a lock held longer should be a lease renewed by its holder.
MAX_TTL_MS = 86_400_000


def check_name(name: object) -> str:
    """Return ``name`` if it can name a lock.

    Raises:
        ConfigurationError: for a non-str, empty, oversized, NUL-holding or unencodable name.
    """
    if not isinstance(name, str):
        raise ConfigurationError("name", f"a lock name must be a str, got {type(name).__name__} {name!r}")
    if not name:
        raise ConfigurationError("name", "a lock name must not be empty")
    if "\x00" in name:
        raise ConfigurationError("name", f"a lock name must not contain NUL: {name[:60]!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ConfigurationError("name", f"a lock name must be valid unicode (lone surrogate at {exc.start})") from exc
    if size > MAX_NAME_BYTES:
        raise ConfigurationError("name", f"a lock name is at most {MAX_NAME_BYTES} UTF-8 bytes, got {size}")
    return name


def ttl_ms(value: object, option: str = "ttl") -> int:
    """Normalise a lease length given in seconds (int, float) or a timedelta to milliseconds.

    Raises:
        ConfigurationError: for a wrong type, a non-positive or non-finite value, below
            one millisecond, or above one day.
    """
    seconds = as_seconds(option, value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(option, f"must be a positive number of seconds, got {value!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ConfigurationError(option, f"must be at least one millisecond, got {value!r}")
    if ms > MAX_TTL_MS:
        raise ConfigurationError(option, f"must be at most one day (renew a shorter lease instead), got {value!r}")
    return ms


def optional_seconds(value: object, option: str) -> float | None:
    """Normalise an optional wait (``None`` = forever) to seconds; 0 is allowed.

    Raises:
        ConfigurationError: for a wrong type, a negative or non-finite value.
    """
    if value is None:
        return None
    seconds = as_seconds(option, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(option, f"must be zero or more seconds, got {value!r}")
    return seconds


def redis_key(prefix: str, name: str) -> str:
    """The Redis key of lock ``name``; its companions append ``:fence`` and ``:wake``."""
    if "{" in name or "}" in name:
        name = "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{prefix}:lock:{{{name}}}"


def advisory_id(name: str) -> int:
    """The stable signed 64-bit PostgreSQL advisory-lock id of ``name`` (see module docstring)."""
    digest = hashlib.sha256(check_name(name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
