"""The fast tier: claims, cached records and publish marks in Redis.

Keys, for a scoped key hashed to ``h`` (hash tag keeps them in one cluster slot)::

    <prefix>:idem:{h}:done    cached Record (JSON), expires with the key's TTL
    <prefix>:idem:{h}:claim   owner token of the running execution, with a lease
    <prefix>:idem:{h}:pub     task id published for the key (publish-time dedup)
    <prefix>:epoch            present while Redis holds every live record (see below)

The epoch key is written once Redis is known to hold every unexpired record in the
database. Redis losing its data (FLUSHALL, a restart without persistence) removes it,
which tells every worker to consult the database before running a key until a warm-up
has copied the records back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from ..scripts import Scripts
from .records import Record


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of :meth:`RedisIdempotency.claim`.

    Attributes:
        status: ``done``, ``claimed`` or ``busy``.
        record: the cached record when ``done``.
        busy_ms: how long the holder's lease still runs when ``busy``.
        warm: whether Redis held its epoch, i.e. a miss here is a miss everywhere.
    """

    status: str
    record: Record | None = None
    busy_ms: int = 0
    warm: bool = True


class RedisIdempotency:
    """Idempotency operations on Redis, each one atomic script."""

    def __init__(self, client: Redis, scripts: Scripts, prefix: str) -> None:
        self.client = client
        self.scripts = scripts
        self.prefix = prefix
        self.epoch_key = f"{prefix}:epoch"

    def keys(self, scoped: str) -> tuple[str, str, str]:
        """Return the done, claim and publish keys of a scoped key."""
        h = hashlib.sha1(scoped.encode("utf-8", "surrogatepass")).hexdigest()
        base = f"{self.prefix}:idem:{{{h}}}"
        return f"{base}:done", f"{base}:claim", f"{base}:pub"

    def claim(self, scoped: str, owner: str, lease_ms: int, check_epoch: bool) -> ClaimResult:
        """Claim the key for ``owner``; one round trip (the epoch check rides along)."""
        done, claim, _ = self.keys(scoped)
        if check_epoch:
            # EVALSHA queued by hand: a Script object in a pipeline costs a SCRIPT EXISTS
            # round trip first. NOSCRIPT (a restarted Redis) falls back to loading it.
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(self.scripts.idem_claim.sha, 2, done, claim, owner, lease_ms)
            pipe.exists(self.epoch_key)
            reply, epoch = pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):
                reply = self.scripts.idem_claim(keys=[done, claim], args=[owner, lease_ms])
            elif isinstance(reply, Exception):
                raise reply
            if isinstance(epoch, Exception):
                raise epoch
        else:
            reply, epoch = self.scripts.idem_claim(keys=[done, claim], args=[owner, lease_ms]), 1
        return self.claim_of(reply, bool(epoch))

    def claim_request(self, scoped: str, owner: str, lease_ms: int) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of ``idem_claim.lua`` (for a caller running it; see :meth:`claim_of`)."""
        done, claim, _ = self.keys(scoped)
        return [done, claim], [owner, lease_ms]

    @staticmethod
    def claim_of(reply: list[Any], warm: bool) -> ClaimResult:
        """The :class:`ClaimResult` of ``idem_claim.lua``'s reply; ``warm``: whether the epoch key was there."""
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "done":
            return ClaimResult("done", record=Record.from_json(reply[1]))
        if status == "busy":
            return ClaimResult("busy", busy_ms=max(int(reply[1]), 0))
        return ClaimResult("claimed", warm=warm)

    def done(self, scoped: str) -> Record | None:
        """The cached record of a completed key, if Redis holds one (one GET)."""
        done, _, _ = self.keys(scoped)
        raw = self.client.get(done)
        return None if raw is None else Record.from_json(raw)

    def complete(self, scoped: str, owner: str, record: Record, ttl_ms: int) -> bool:
        """Cache ``record`` and drop our claim; returns whether the claim was still ours."""
        keys, args = self.complete_request(scoped, owner, record, ttl_ms)
        return bool(self.scripts.idem_complete(keys=keys, args=args))

    def complete_request(
        self, scoped: str, owner: str, record: Record, ttl_ms: int
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of ``idem_complete.lua`` (for a caller sending it with other calls)."""
        done, claim, _ = self.keys(scoped)
        return [done, claim], [owner, record.to_json(), ttl_ms]

    def cache(self, scoped: str, record: Record, ttl_ms: int) -> None:
        """Cache a record read from the database (the claim, if any, is left alone)."""
        done, _, _ = self.keys(scoped)
        self.client.set(done, record.to_json(), px=max(ttl_ms, 1), nx=True)

    def release(self, scoped: str, owner: str) -> bool:
        """Drop our claim so another attempt can run; returns whether it was ours."""
        _, claim, _ = self.keys(scoped)
        return bool(self.scripts.lease_release(keys=[claim], args=[owner]))

    def renew(self, claim_key: str, owner: str, lease_ms: int) -> bool:
        """Extend our claim's lease; ``False`` means we lost it."""
        return bool(self.scripts.lease_renew(keys=[claim_key], args=[owner, lease_ms]))

    def publish_once(self, scoped: str, task_id: str, ttl_ms: int) -> str | None:
        """Mark ``task_id`` as the one published for the key; return an earlier id if any."""
        _, _, pub = self.keys(scoped)
        earlier = self.scripts.publish_once(keys=[pub], args=[task_id, ttl_ms])
        earlier = earlier.decode() if isinstance(earlier, bytes) else earlier
        return earlier or None

    def forget_publish(self, scoped: str, task_id: str) -> None:
        """Undo :meth:`publish_once` after a failed publish (only if still ours)."""
        _, _, pub = self.keys(scoped)
        self.scripts.lease_release(keys=[pub], args=[task_id])

    def is_warm(self) -> bool:
        """Whether Redis holds its epoch (every live record is cached)."""
        return bool(self.client.exists(self.epoch_key))

    def mark_warm(self) -> None:
        """Record that Redis now holds every live record."""
        self.client.set(self.epoch_key, "1")
