"""Redlock: a lease held on a majority of independent Redis nodes, with fencing tokens.

Each node keeps the keys of :class:`~celery_reliable.locks.redis_lock.RedisLock`:
``<prefix>:lock:{name}`` (the owner, expiring after the lease) and ``...:fence`` (``n``,
the last token handed out there). An attempt runs ``redlock_acquire.lua``
on each node in turn (SET NX PX, then ``n = max(n + 1, server time in µs, proposal)``).
It is granted when a quorum (N//2 + 1) said yes and the validity left, ``ttl - elapsed -
(ttl * drift_factor + 2 ms)``, is positive; otherwise it is released on every node and
retried after a jittered pause. A quorum of unreachable nodes fails at once.

Fencing tokens (Redlock alone has none). A hold's token is the largest ``n`` its granted
nodes returned, handed out only once a quorum of nodes store a counter >= it: those that
returned it, plus granted nodes that ``redlock_raise.lua`` raised to it while our key was
still there. Two granted holds have quorums that share a node. There each hold's key
lived from its acquire until at least its grant, and the keys cannot coexist, so the
later-granted hold set its key after the other's was gone: it found a counter >= the
earlier token and returned more. Tokens increase in the order holds are granted, and
never fall below the nodes' clocks. The client proposes ``its clock + 1 s`` (a node
ignores a proposal more than 10 s ahead of its own clock), so nodes usually return the
same value and the raise round is rare; a proposal only raises tokens, safety does not
rest on it.

Limits (those of Redlock): a node that restarts empty must stay down for at least the
TTL before it answers again (the paper's delayed restart), or both mutual exclusion and
token order weaken. Give the clients short timeouts and few retries (as
:meth:`Redlock.from_urls` does): a node that hangs delays every attempt, and redis-py's
default retries take seconds to give up on a refused connection.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import redis
from redis.exceptions import RedisError

from ..errors import ConfigurationError, LockError, LockLost, QuorumUnavailable
from ..heartbeat import Lease, heartbeat
from ..scripts import script_for
from .lease_context import LeaseContext
from .names import check_name, optional_seconds, redis_key, ttl_ms
from .redis_lock import FENCE_TTL_MS

logger = logging.getLogger("celery_reliable.locks")
_HOST = socket.gethostname()
#: How far ahead of the client's clock it proposes the token, and how far ahead of its own
#: clock a node accepts a proposal (both in microseconds).
PROPOSAL_LEAD_US = 1_000_000
PROPOSAL_MAX_AHEAD_US = 10_000_000


def _try(call: Any, *args: Any) -> Any:
    """``call(*args)``, or the RedisError it raised."""
    try:
        return call(*args)
    except RedisError as exc:
        return exc


def _never_ran(exc: BaseException | None) -> bool:
    """Whether a node's error proves the command never reached it (the connection was refused)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Redlock(LeaseContext):
    """A lock granted by a majority of independent Redis nodes; a lease with a fencing token.

    Args:
        clients: the nodes, one ``redis.Redis`` each (3 or 5 recommended; any N works
            with a quorum of N//2 + 1). They must be independent servers, not replicas.
        name: the lock's name (any unicode up to 1024 UTF-8 bytes).
        ttl: the lease, in seconds or a timedelta (default 30 s).
        blocking: whether ``with`` and ``acquire()`` wait for the lock by default.
        timeout: the longest wait for a blocking acquire (``None`` waits for ever).
        retry_delay: mean pause between attempts, in seconds (jittered ±50 %).
        drift_factor: share of the ttl allowed for clock drift between nodes.
        renew: run the heartbeat while held (renewed on every node, kept with a quorum).
        prefix: prefix of the Redis keys (default ``"reliable"``).

    A node that fails (connection error, timeout, or an error reply such as READONLY or
    OOM) counts as unreachable for that call; nodes are called one after the other.

    Attributes:
        token: the fencing token of the current hold (``None`` when not held).
        lost: set when the heartbeat finds the lease gone on a majority.
        validity: seconds of validity the hold had when granted or last extended.
        valid_until: ``time.monotonic()`` deadline of that validity.
        retry_after: seconds until enough of the holder's keys expire for a quorum to be
            free, as the last failed attempt saw them (``None`` when unknown).

    Raises:
        ConfigurationError: for bad clients, name, ttl, timeout, retry_delay or drift_factor.
    """

    def __init__(
        self,
        clients: Sequence[redis.Redis],
        name: str,
        ttl: float | timedelta = 30.0,
        *,
        blocking: bool = True,
        timeout: float | timedelta | None = None,
        retry_delay: float | timedelta = 0.2,
        drift_factor: float = 0.01,
        renew: bool = True,
        prefix: str = "reliable",
    ) -> None:
        self.clients = _check_clients(clients)
        self.quorum = len(self.clients) // 2 + 1
        self.name = check_name(name)
        self.ttl_ms = ttl_ms(ttl)
        self.blocking = bool(blocking)
        self.timeout = optional_seconds(timeout, "timeout")
        delay = optional_seconds(retry_delay, "retry_delay")
        if delay is None:
            raise ConfigurationError("retry_delay", "expected seconds, got None")
        self.retry_delay = delay
        if isinstance(drift_factor, bool) or not isinstance(drift_factor, (int, float)) or not 0 <= drift_factor < 1:
            raise ConfigurationError("drift_factor", f"expected a number in [0, 1), got {drift_factor!r}")
        self.drift_factor = float(drift_factor)
        if self.ttl_ms * (1 - self.drift_factor) <= 2:
            raise ConfigurationError("ttl", f"{ttl!r} leaves no validity after the clock-drift allowance")
        self.renew = bool(renew)
        self.key = redis_key(prefix, self.name)
        self.keys = [self.key, f"{self.key}:fence"]
        self.token: int | None = None
        self.lost = threading.Event()
        self.validity: float | None = None
        self.valid_until = 0.0
        self._owner: str | None = None
        self._lease: Lease | None = None
        self.retry_after: float | None = None

    @classmethod
    def from_urls(cls, urls: Sequence[str], name: str, ttl: float | timedelta = 30.0, **options: Any) -> Redlock:
        """Build a Redlock over new clients with fail-fast settings (0.2 s timeouts, one retry).

        Args:
            urls: one ``redis://`` URL per node.
            name: the lock's name; ``ttl`` and ``options`` as for the constructor.

        Returns:
            the Redlock.
        """
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if isinstance(urls, str) or not isinstance(urls, (list, tuple)):
            raise ConfigurationError("urls", f"expected a list of redis:// URLs, got {urls!r}")
        clients = [
            redis.Redis.from_url(u, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 1))
            for u in urls
        ]
        return cls(clients, name, ttl, **options)

    def _run(self, script: str, nodes: Sequence[int], args: list[Any]) -> list[Any]:
        """Run ``script`` on each node in turn; a node that fails gives its exception instead of a reply."""
        replies = [_try(script_for(self.clients[i], script), self.keys, args) for i in nodes]
        failures = [(i, r) for i, r in zip(nodes, replies, strict=True) if isinstance(r, RedisError)]
        if failures:
            logger.debug("lock %r: %s failed on nodes %s", self.name, script, failures)
        return replies

    def _undo(self, owner: str, failed: dict[int, BaseException]) -> None:
        """Release an attempt on every node but those that provably never saw it."""
        self._run("lease_release", [i for i in range(len(self.clients)) if not _never_ran(failed.get(i))], [owner])

    def _attempt(self, owner: str) -> int | None:
        """One acquisition round; returns the token, or None (and undoes the round) when not granted."""
        start = time.monotonic()
        args = [owner, self.ttl_ms, FENCE_TTL_MS, time.time_ns() // 1000 + PROPOSAL_LEAD_US, PROPOSAL_MAX_AHEAD_US]
        replies = self._run("redlock_acquire", range(len(self.clients)), args)
        failed = {i: r for i, r in enumerate(replies) if isinstance(r, BaseException)}
        granted = {i: int(r[1]) for i, r in enumerate(replies) if i not in failed and int(r[0]) == 1}
        token = None
        try:
            if len(self.clients) - len(failed) < self.quorum:
                first = next(iter(failed.values()))  # the cause, for the traceback
                raise QuorumUnavailable(self.name, len(self.clients) - len(failed), self.quorum) from first
            if len(granted) >= self.quorum:
                top = max(granted.values())
                holding = sum(1 for v in granted.values() if v >= top)
                if holding < self.quorum:  # too few nodes store `top` yet: raise the granted others to it
                    low = [i for i, v in granted.items() if v < top]
                    raised = self._run("redlock_raise", low, [owner, top, FENCE_TTL_MS])
                    holding += sum(1 for r in raised if not isinstance(r, BaseException) and int(r) >= top)
                if holding >= self.quorum and self._set_validity(start, self.ttl_ms):
                    token = top
                    return token
            busy = sorted(int(r[1]) for i, r in enumerate(replies) if i not in failed and i not in granted)
            short = self.quorum - len(granted)  # how many holders' keys must expire before a quorum is free
            self.retry_after = busy[short - 1] / 1000 if 0 < short <= len(busy) and busy[short - 1] > 0 else None
            return None
        finally:
            if token is None:
                self._undo(owner, failed)

    def _set_validity(self, start: float, ms: int) -> bool:
        """Record the validity of keys set with a ``ms`` lease from ``start``; whether any is left."""
        now = time.monotonic()
        left_ms = ms - (now - start) * 1000 - (ms * self.drift_factor + 2)
        if left_ms <= 0:
            logger.warning(
                "lock %r: the nodes took %.3fs to answer, which leaves no validity of a %d ms lease; give the "
                "clients short timeouts and few retries (see Redlock.from_urls)",
                self.name,
                now - start,
                ms,
            )
            return False
        self.validity, self.valid_until = left_ms / 1000, now + left_ms / 1000
        return True

    @property
    def owner(self) -> str | None:
        """The owner token of the current hold (``None`` when not held by this object)."""
        return self._owner

    def held(self) -> bool:
        """Whether this object holds the lock: not released, not lost, within its validity."""
        return self._owner is not None and not self.lost.is_set() and time.monotonic() < self.valid_until

    def check(self) -> None:
        """Raise :class:`LockLost` if the lease was lost, or its validity ran out unrenewed.

        Raises:
            LockError: when not held by this object.
            LockLost: when the lock may now be held by someone else.
        """
        if self._owner is None:
            raise LockError(self.name, "not held")
        if not self.lost.is_set() and time.monotonic() >= self.valid_until:
            self.lost.set()
        if self.lost.is_set():
            raise LockLost(self.name, "the lease was lost while held (expired, or a majority lost it)")

    def acquire(self, blocking: bool | None = None, timeout: float | timedelta | None = None) -> bool:
        """Acquire the lock on a majority of the nodes.

        Args:
            blocking: wait for it (default: the constructor's ``blocking``).
            timeout: longest wait in seconds (default: the constructor's ``timeout``).

        Returns:
            True when acquired; False when not blocking, or the timeout ran out.

        Raises:
            QuorumUnavailable: fewer than a quorum of nodes answered (raised at once, not retried).
            LockError: this object already holds the lock (it is not reentrant).
        """
        if self._owner is not None:
            raise LockError(self.name, "already held by this Redlock object (it is not reentrant)")
        block = self.blocking if blocking is None else bool(blocking)
        wait = self.timeout if timeout is None else optional_seconds(timeout, "timeout")
        deadline = None if (not block or wait is None) else time.monotonic() + wait
        while True:
            owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex}"
            token = self._attempt(owner)
            if token is not None:
                self._owner, self.token, self.lost = owner, token, threading.Event()
                self._start_heartbeat(owner)
                return True
            if not block:
                return False
            pause = self.retry_delay * random.uniform(0.5, 1.5)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                pause = min(pause, left)
            time.sleep(pause)

    def _extend(self, owner: str, ms: int) -> tuple[bool, int, int]:
        """Extend on every node; returns (quorum extended, nodes that answered, nodes that refused)."""
        start = time.monotonic()
        replies = self._run("lease_renew", range(len(self.clients)), [owner, ms])
        answered = [r for r in replies if not isinstance(r, BaseException)]
        ok = sum(1 for r in answered if int(r) == 1)
        if ok >= self.quorum and owner == self._owner:
            self._set_validity(start, ms)
        return ok >= self.quorum, len(answered), len(answered) - ok

    def _start_heartbeat(self, owner: str) -> None:
        if not self.renew:
            return
        refusals_lost = len(self.clients) - self.quorum

        def renew() -> bool:
            if self._owner != owner:  # released meanwhile (the heartbeat took it just before): no loss
                return True
            ok, answered, refused = self._extend(owner, self.ttl_ms)
            if ok or self._owner != owner:
                return True
            if refused > refusals_lost or time.monotonic() >= self.valid_until:
                return False
            raise QuorumUnavailable(self.name, answered, self.quorum)  # unknown yet: the heartbeat retries soon

        self._lease = heartbeat().add(Lease(f"redlock {self.name!r}", self.ttl_ms, renew, lost=self.lost))

    def _stop_heartbeat(self) -> None:
        if self._lease is not None:
            heartbeat().remove(self._lease)
            self._lease = None

    def extend(self, ttl: float | timedelta | None = None) -> None:
        """Reset the lease to ``ttl`` (default: the lock's ttl) from now, on every node.

        Raises:
            LockLost: a majority no longer holds our key.
            QuorumUnavailable: too few nodes answered to know (the lock may still be held).
        """
        self.check()
        assert self._owner is not None
        ok, answered, refused = self._extend(self._owner, self.ttl_ms if ttl is None else ttl_ms(ttl))
        if ok:
            return
        if refused > len(self.clients) - self.quorum:
            self.lost.set()
            raise LockLost(self.name, "could not extend: a majority of the nodes no longer hold it")
        raise QuorumUnavailable(self.name, answered, self.quorum)

    def release(self) -> bool:
        """Release the lock on every node (only where the key is still ours).

        Returns:
            True if a quorum still held our key (or, with nodes unreachable, the validity
            had not run out); False if the lease was already lost (:attr:`lost` is set).

        Raises:
            LockError: when the lock is not held by this object.
        """
        if self._owner is None:
            raise LockError(self.name, "release of a lock this object does not hold")
        self._stop_heartbeat()
        valid = not self.lost.is_set() and time.monotonic() < self.valid_until
        owner, self._owner, self.token = self._owner, None, None
        replies = self._run("lease_release", range(len(self.clients)), [owner])
        freed = sum(1 for r in replies if not isinstance(r, BaseException) and int(r) == 1)
        unknown = sum(1 for r in replies if isinstance(r, BaseException))
        if freed >= self.quorum or (valid and freed + unknown >= self.quorum):
            return True
        self.lost.set()
        return False

    def locked(self) -> bool:
        """Whether a majority of the nodes hold the lock now (anyone's; one EXISTS per node)."""
        replies = [_try(c.exists, self.key) for c in self.clients]
        return sum(1 for r in replies if r == 1) >= self.quorum

    def __repr__(self) -> str:
        state = f"token={self.token}" if self._owner else "not held"
        return f"<Redlock {self.name!r} nodes={len(self.clients)} quorum={self.quorum} ttl={self.ttl_ms}ms {state}>"


def _check_clients(clients: object) -> list[redis.Redis]:
    if isinstance(clients, redis.Redis) or not isinstance(clients, (list, tuple)):
        raise ConfigurationError("clients", f"expected a list or tuple of redis.Redis clients, got {clients!r}")
    if not clients:
        raise ConfigurationError("clients", "at least one Redis node is needed (3 or 5 recommended)")
    seen: set[tuple[Any, ...]] = set()
    for i, client in enumerate(clients):
        if not isinstance(client, redis.Redis):
            kind = "an asyncio client (not supported)" if hasattr(client, "register_script") else repr(client)
            raise ConfigurationError("clients", f"clients[{i}] must be a redis.Redis, got {kind}")
        kw = client.connection_pool.connection_kwargs
        where = (kw.get("host"), kw.get("port"), kw.get("path"))
        if where in seen:
            raise ConfigurationError(
                "clients", f"clients[{i}] is the same server as an earlier one ({where}); each must be its own node"
            )
        seen.add(where)
    return list(clients)
