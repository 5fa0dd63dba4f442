"""Atomic operations on the deferred set (the parking lot).

Keys (one hash tag, so the scripts also run on Redis Cluster)::

    <prefix>:{deferred}:due        sorted set: entry -> due time (ms, server clock)
    <prefix>:{deferred}:inflight   sorted set: entry -> lease deadline (ms)
    <prefix>:{deferred}:broken     sorted set: entries that could not be decoded or sent
    <prefix>:{deferred}:lockwait:<sha1 of a lock key>
                                   sorted set: entries parked until that lock is released

An entry is the JSON of a Celery signature plus a park id, so it is unique in the set.
Moving an entry back to its queue is at-least-once: ``take`` moves due entries into
``inflight`` under a lease, the caller publishes them, then ``ack`` removes them;
``sweep`` returns entries whose lease ran out (their pump died) to ``due``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from redis import Redis

from ..jsoncodec import dumps, loads
from ..scripts import Scripts


class DeferredSet:
    """The parking lot of one app, on one Redis."""

    def __init__(self, client: Redis, scripts: Scripts, prefix: str) -> None:
        self.client = client
        self.scripts = scripts
        base = f"{prefix}:{{deferred}}"
        self.due_key = f"{base}:due"
        self.inflight_key = f"{base}:inflight"
        self.broken_key = f"{base}:broken"

    @staticmethod
    def entry(signature: dict[str, Any], reason: str) -> str:
        """Serialize a signature (a dict) into a unique entry.

        Raises:
            SerializationError: when the signature holds something JSON cannot.
        """
        return dumps({"id": uuid.uuid4().hex, "reason": reason, "sig": signature}, where="deferred task")

    @staticmethod
    def decode(entry: bytes | str) -> dict[str, Any]:
        """Decode an entry written by :meth:`entry`."""
        data = loads(entry)
        if not isinstance(data, dict) or not isinstance(data.get("sig"), dict):
            raise ValueError("not a deferred-set entry")
        return data

    def park(self, entry: str, delay_ms: int) -> int:
        """Park ``entry`` until ``delay_ms`` from now (server clock); returns its due time."""
        return int(self.scripts.deferred_park(keys=[self.due_key], args=[max(int(delay_ms), 0), entry]))

    def waiters_key(self, lock_key: str) -> str:
        """The set of entries parked until the lock with Redis key ``lock_key`` is released."""
        digest = hashlib.sha1(lock_key.encode("utf-8"), usedforsecurity=False).hexdigest()
        return f"{self.due_key.rsplit(':', 1)[0]}:lockwait:{digest}"

    def park_waiting(self, entry: str, delay_ms: int, lock_key: str) -> int:
        """Park ``entry`` like :meth:`park`, and list it to be woken when the lock is released."""
        keys = [self.due_key, self.waiters_key(lock_key)]
        return int(self.scripts.deferred_park_waiting(keys=keys, args=[max(int(delay_ms), 0), entry]))

    def wake(self, lock_key: str) -> bool:
        """Make the longest-waiting entry parked for a lock due now; True if there was one."""
        return bool(self.scripts.deferred_wake(keys=[self.due_key, self.waiters_key(lock_key)]))

    def take(self, limit: int, lease_ms: int) -> list[bytes]:
        """Move up to ``limit`` due entries in flight and return them."""
        return list(self.scripts.deferred_take(keys=[self.due_key, self.inflight_key], args=[limit, lease_ms]))

    def ack(self, entries: list[bytes]) -> None:
        """Forget entries that were published."""
        if entries:
            self.client.zrem(self.inflight_key, *entries)

    def bury(self, entry: bytes) -> None:
        """Keep an entry that cannot be decoded or sent, out of the way, for inspection."""
        pipe = self.client.pipeline()
        pipe.zadd(self.broken_key, {entry: 0})
        pipe.zrem(self.inflight_key, entry)
        pipe.execute()

    def sweep(self, limit: int = 1000) -> int:
        """Return in-flight entries whose lease ran out to the due set; returns how many."""
        return int(self.scripts.deferred_sweep(keys=[self.inflight_key, self.due_key], args=[limit]))

    def sizes(self) -> dict[str, int]:
        """Entries parked, in flight, and broken."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.due_key)
        pipe.zcard(self.inflight_key)
        pipe.zcard(self.broken_key)
        due, inflight, broken = pipe.execute()
        return {"due": due, "inflight": inflight, "broken": broken}
