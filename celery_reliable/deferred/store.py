"""Atomic operations on the deferred set (the parking lot).

Keys (one hash tag, so the scripts also run on Redis Cluster)::

    <prefix>:{deferred}:due        sorted set: entry -> due time (ms, server clock)
    <prefix>:{deferred}:inflight   sorted set: entry -> lease deadline (ms)
    <prefix>:{deferred}:broken     sorted set: entries that could not be decoded or sent
    <prefix>:{deferred}:lockwait:<sha1 of a lock key>
                                   sorted set: entries parked until that lock is released
    <prefix>:{deferred}:wake       list: one token that wakes a sleeping pump (BLPOP)

An entry is the JSON of a Celery signature plus a park id, so it is unique in the set.
Moving an entry back to its queue is at-least-once: ``take`` moves due entries into
``inflight`` under a lease, the caller publishes them, then ``ack`` removes them;
``sweep`` returns entries whose lease ran out (their pump died) to ``due``.

A pump sleeps until the earliest parked entry is due (``take`` says when, on the server's
clock), at most its interval. An entry parked due sooner than that, or woken because its
lock was released, pushes a token onto ``wake`` in the same round trip, so one sleeping
pump looks again at once.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from ..jsoncodec import dumps, loads
from ..scripts import Scripts

#: Entries parked due sooner than this (ms) wake a sleeping pump, which otherwise looks
#: again after its interval (``reliable_pump_interval``, 0.5 s by default).
WAKE_WITHIN_MS = 1000

#: How long an unclaimed wake token is kept (ms): no pump was asleep to take it.
WAKE_TOKEN_TTL_MS = 60_000


class Batch(list[bytes]):
    """Entries taken by :meth:`DeferredSet.take`, and when the next one is due.

    Attributes:
        next_due_ms: milliseconds until the earliest entry left in the due set is due
            (server clock; 0 when more are due now), ``None`` when the set is empty.
    """

    next_due_ms: int | None = None


class DeferredSet:
    """The parking lot of one app, on one Redis."""

    def __init__(self, client: Redis, scripts: Scripts, prefix: str, wake_within_ms: int = WAKE_WITHIN_MS) -> None:
        self.client = client
        self.scripts = scripts
        self.wake_within_ms = wake_within_ms
        base = f"{prefix}:{{deferred}}"
        self.due_key = f"{base}:due"
        self.inflight_key = f"{base}:inflight"
        self.broken_key = f"{base}:broken"
        self.wake_key = f"{base}:wake"

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
        delay = max(int(delay_ms), 0)
        return int(self._run("deferred_park", [self.due_key], [delay, entry], wake=delay < self.wake_within_ms))

    def waiters_key(self, lock_key: str) -> str:
        """The set of entries parked until the lock with Redis key ``lock_key`` is released."""
        digest = hashlib.sha1(lock_key.encode("utf-8"), usedforsecurity=False).hexdigest()
        return f"{self.due_key.rsplit(':', 1)[0]}:lockwait:{digest}"

    def park_waiting(self, entry: str, delay_ms: int, lock_key: str) -> int:
        """Park ``entry`` like :meth:`park`, and list it to be woken when the lock is released."""
        delay = max(int(delay_ms), 0)
        keys = [self.due_key, self.waiters_key(lock_key)]
        return int(self._run("deferred_park_waiting", keys, [delay, entry], wake=delay < self.wake_within_ms))

    def wake(self, lock_key: str) -> bool:
        """Make the longest-waiting entry parked for a lock due now; True if there was one."""
        return bool(self._run("deferred_wake", [self.due_key, self.waiters_key(lock_key)], [], wake=True))

    def _run(self, name: str, keys: list[str], args: list[Any], wake: bool) -> Any:
        """Run script ``name``; with ``wake``, push a wake token in the same round trip."""
        script = getattr(self.scripts, name)
        if not wake:
            return script(keys=keys, args=args)
        try:
            return self._signalled(self.client.pipeline(transaction=False).evalsha(script.sha, len(keys), *keys, *args))
        except NoScriptError:  # Redis forgot its scripts (a pump may have woken for nothing): once more
            result = script(keys=keys, args=args)  # loads the script
            self._signalled(self.client.pipeline(transaction=False))
            return result

    def _signalled(self, pipe: Any) -> Any:
        """Run ``pipe`` with a wake token pushed after its commands; the first result.

        The script runs through ``evalsha`` on the pipeline: ``script(client=pipe)`` would
        cost a ``SCRIPT EXISTS`` round trip first.
        """
        pipe.lpush(self.wake_key, 1)
        pipe.ltrim(self.wake_key, 0, 0)
        pipe.pexpire(self.wake_key, WAKE_TOKEN_TTL_MS)
        return pipe.execute()[0]

    def wait_for_wake(self, seconds: float, own_key: str) -> bool:
        """Block up to ``seconds`` for a wake token (or one on ``own_key``); True if one came.

        A token on ``own_key`` (see :meth:`wake_own`) wakes only the caller, to stop it.
        """
        if seconds < 0.001:  # BLPOP reads a timeout of 0 as "for ever"
            return False
        return self.client.blpop([own_key, self.wake_key], timeout=seconds) is not None

    def own_wake_key(self, name: str) -> str:
        """A wake key that belongs to one pump (``name`` unique per pump)."""
        return f"{self.wake_key}:{name}"

    def wake_own(self, own_key: str) -> None:
        """Wake the one pump blocked on ``own_key``."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(own_key, 1)
        pipe.pexpire(own_key, WAKE_TOKEN_TTL_MS)
        pipe.execute()

    def take(self, limit: int, lease_ms: int) -> Batch:
        """Move up to ``limit`` due entries in flight; return them and when the next is due."""
        items, wait_ms = self.scripts.deferred_take(keys=[self.due_key, self.inflight_key], args=[limit, lease_ms])
        batch = Batch(items)
        batch.next_due_ms = None if int(wait_ms) < 0 else int(wait_ms)
        return batch

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
