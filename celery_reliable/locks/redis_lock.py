"""RedisLock: a lease on one Redis node, with a fencing token, renewal and loss detection.

Keys (all in one Redis Cluster slot, see :func:`~celery_reliable.locks.names.redis_key`):

- ``<prefix>:lock:{name}``: the owner token, expiring after the lease;
- ``<prefix>:lock:{name}:fence``: the last fencing token handed out (and ``:ceiling``,
  the highest token the database reserved, with ``fence_db``);
- ``<prefix>:lock:{name}:wake``: a list a release pushes to, so blocked acquirers wake
  at once instead of polling;
- ``<prefix>:lock:{name}:waiters``: set while someone waits (a blocked acquire, or a task
  parked in the deferred set), so a release only pushes a wake-up when it is needed.

Acquire is one script (``lock_acquire.lua``) and release another (``lock_release.lua``):
a pair costs two round trips. The same object works with ``redis.Redis`` (``with``,
``acquire()``) and ``redis.asyncio.Redis`` (``async with``, ``await aacquire()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, LockError, LockLost, LockNotAcquired
from ..heartbeat import Lease, heartbeat
from ..scripts import script_for
from . import fence_store
from .lease_context import LeaseContext
from .names import check_name, optional_seconds, redis_key, ttl_ms

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger("celery_reliable.locks")

#: How long an unclaimed wake-up stays in the wake list.
WAKE_TTL_MS = 5_000
#: How long a name's fence key outlives its last acquire (tokens are time-based, so a
#: new key after expiry still hands out larger tokens).
FENCE_TTL_MS = 7 * 86_400_000
_HOST = socket.gethostname()


_seq = itertools.count()
_nonce = uuid.uuid4().hex[:12]


def new_owner() -> str:
    """A unique owner token: ``<host>:<pid>:<per-process nonce><counter>`` (host and pid first,
    so a worker's main process can tell a dead local holder's lock)."""
    return f"{_HOST}:{os.getpid()}:{_nonce}{next(_seq)}"


def _new_nonce() -> None:
    global _nonce, _seq
    _nonce, _seq = uuid.uuid4().hex[:12], itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_nonce)


def _is_async(client: Any) -> bool:
    from redis.asyncio import Redis as AsyncRedis

    return isinstance(client, AsyncRedis)


class RedisLock(LeaseContext):
    """A distributed lock on one Redis node that is a lease, not a mutex.

    Args:
        client: ``redis.Redis`` for ``with`` / ``acquire()``, or ``redis.asyncio.Redis``
            for ``async with`` / ``aacquire()``.
        name: the lock's name (any unicode up to 1024 UTF-8 bytes).
        ttl: the lease, in seconds or a timedelta (default 30 s). The heartbeat renews it
            every third of it while held, so a live holder keeps the lock; a dead one
            loses it after ``ttl``.
        blocking: whether ``with`` and ``acquire()`` wait for the lock by default.
        timeout: the longest wait for a blocking acquire (``None`` waits for ever).
        renew: run the heartbeat while held (default True).
        fence_db: a SQLAlchemy engine holding ``reliable_fence_tokens``: fencing tokens
            are then reserved there in ranges and never go backwards, even after Redis
            loses its data and its clock steps back.
        prefix: prefix of the Redis keys (default ``"reliable"``).

    Attributes:
        token: the fencing token of the current hold (``None`` when not held). Pass it
            with every write to the protected resource (see
            :func:`~celery_reliable.locks.fencing.fenced_update`).
        lost: set when the heartbeat finds the lease gone; :meth:`check` then raises.

    Raises:
        ConfigurationError: for a bad name, ttl, timeout or client.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        ttl: float | timedelta = 30.0,
        *,
        blocking: bool = True,
        timeout: float | timedelta | None = None,
        renew: bool = True,
        fence_db: Engine | None = None,
        prefix: str = "reliable",
    ) -> None:
        if client is None or not hasattr(client, "register_script"):
            raise ConfigurationError("client", f"expected a redis.Redis or redis.asyncio.Redis, got {client!r}")
        self.client = client
        self.name = check_name(name)
        self.ttl_ms = ttl_ms(ttl)
        self.blocking = bool(blocking)
        self.timeout = optional_seconds(timeout, "timeout")
        self.renew = bool(renew)
        self.fence_db = fence_db
        self.key = redis_key(prefix, self.name)
        self.fence_key = f"{self.key}:fence"
        self.wake_key = f"{self.key}:wake"
        self.waiters_key = f"{self.key}:waiters"
        self._acquire_keys = [self.key, self.fence_key, f"{self.key}:ceiling", self.waiters_key]
        self._release_keys = [self.key, self.wake_key, self.waiters_key]
        self._async = _is_async(client)
        self._durable = "1" if fence_db is not None else "0"
        #: whether the last release found someone waiting (a blocked acquire or a parked task)
        self.had_waiters = False
        self.token: int | None = None
        self.lost = threading.Event()
        self._owner: str | None = None
        self._lease: Lease | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._acquired_at = 0.0
        self._last_pttl = 0

    # -- shared logic ---------------------------------------------------------------

    def _acquire_args(self, owner: str, wait: bool, floor: str = "", ceiling: str = "") -> list[Any]:
        return [owner, self.ttl_ms, self._durable, FENCE_TTL_MS, floor, ceiling, "1" if wait else "0"]

    @staticmethod
    def _reply(reply: Any) -> tuple[str, int]:
        """Decode ``lock_acquire.lua``'s answer: ("granted", token), ("busy", pttl) or ("reserve", wanted)."""
        if isinstance(reply, list):
            return "reserve", int(reply[0])
        value = int(reply)
        return ("granted", value) if value > 0 else ("busy", -value - 1)

    def _check_client(self, want_async: bool) -> None:
        if self._async != want_async:
            if want_async:
                raise ConfigurationError("client", "async with / aacquire() need a redis.asyncio.Redis client")
            raise ConfigurationError("client", "with / acquire() need a redis.Redis client; use async with")
        if self._owner is not None:
            raise LockError(self.name, "already held by this RedisLock object (it is not reentrant)")

    def _granted(self, owner: str, token: int) -> None:
        self._owner = owner
        self.token = token
        self._last_pttl = 0
        self._acquired_at = time.monotonic()
        self.lost.clear()

    def _wait_s(self, deadline: float | None, pttl_ms: int) -> float:
        """How long to block on the wake list: until a release, the holder's expiry, or the deadline."""
        wait = pttl_ms / 1000.0 + 0.005 if pttl_ms > 0 else 0.1
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        return max(wait, 0.0)

    def _released(self, status: int) -> bool:
        self.had_waiters = status == 2
        return status > 0

    @property
    def retry_after(self) -> float | None:
        """Seconds the holder's lease still ran when the last acquire found the lock busy."""
        return self._last_pttl / 1000.0 if self._last_pttl > 0 else None

    @property
    def owner(self) -> str | None:
        """The owner token of the current hold (``None`` when not held by this object)."""
        return self._owner

    def held(self) -> bool:
        """Whether this object believes it holds the lock (not lost, not released)."""
        return self._owner is not None and not self.lost.is_set()

    def check(self) -> None:
        """Raise :class:`LockLost` if the lease was lost while held.

        Call it before a write that must not overlap another holder (and pass
        :attr:`token` with the write, so the resource rejects it if the loss happens
        after this check).
        """
        if self._owner is None:
            raise LockError(self.name, "not held")
        if self.lost.is_set():
            raise LockLost(self.name, "the lease was lost while held (expired, or Redis lost it)")

    def _resolve(self, blocking: bool | None, timeout: float | timedelta | None) -> tuple[bool, float | None]:
        block = self.blocking if blocking is None else bool(blocking)
        wait = self.timeout if timeout is None else optional_seconds(timeout, "timeout")
        deadline = None if (not block or wait is None) else time.monotonic() + wait
        return block, deadline

    # -- sync -------------------------------------------------------------------------

    def acquire(self, blocking: bool | None = None, timeout: float | timedelta | None = None) -> bool:
        """Acquire the lock.

        Args:
            blocking: wait for it (default: the constructor's ``blocking``).
            timeout: longest wait in seconds (default: the constructor's ``timeout``).

        Returns:
            True when acquired; False when not blocking, or the timeout ran out.
        """
        self._check_client(want_async=False)
        block, deadline = self._resolve(blocking, timeout)
        return self._acquire(new_owner(), block, deadline, None)

    def acquire_request(self, owner: str) -> tuple[list[str], list[Any]]:
        """The keys and arguments of a non-blocking ``lock_acquire.lua`` call for ``owner``.

        For callers that run the script themselves (a task's admission round trip);
        hand the script's reply to :meth:`acquire_answered`. ``owner`` must be unique to
        this hold (see :func:`new_owner`).
        """
        return list(self._acquire_keys), self._acquire_args(owner, False)

    def acquire_answered(self, owner: str, reply: Any) -> bool:
        """Finish a non-blocking acquire whose script the caller ran (see :meth:`acquire_request`).

        With ``reply=None`` the script is run here, for ``owner``: an owner whose earlier
        call was granted but whose reply was lost gets its hold back.

        Returns:
            True when acquired (the heartbeat runs as after :meth:`acquire`); False when busy.
        """
        self._check_client(want_async=False)
        return self._acquire(owner, False, None, reply)

    def _acquire(self, owner: str, block: bool, deadline: float | None, reply: Any) -> bool:
        script = script_for(self.client, "lock_acquire")
        args = self._acquire_args(owner, block)
        while True:
            if reply is None:
                reply = script(keys=self._acquire_keys, args=args)
            kind, value = self._reply(reply)
            reply = None
            if kind == "granted":
                self._granted(owner, value)
                self._start_heartbeat()
                return True
            if kind == "reserve":
                assert self.fence_db is not None
                floor, ceiling = fence_store.reserve(self.fence_db, self.name, value)
                args = self._acquire_args(owner, block, str(floor), str(ceiling))
                continue
            args = self._acquire_args(owner, block)
            self._last_pttl = value
            if not block:
                return False
            wait = self._wait_s(deadline, value)
            if wait <= 0:
                return False
            self._block(wait)

    def _block(self, wait: float) -> None:
        from redis.exceptions import TimeoutError as RedisTimeout

        with contextlib.suppress(RedisTimeout):  # the client's socket_timeout is shorter than the wait
            self.client.blpop([self.wake_key], timeout=max(wait, 0.001))

    def _start_heartbeat(self) -> None:
        if not self.renew:
            return
        owner = self._owner
        renew_script = script_for(self.client, "lease_renew")

        def renew() -> bool:
            # The heartbeat thread may run a renewal it took from its registry just before a
            # release: a hold that ended (its key deleted by our own release) is no loss, and
            # must not mark ``lost``, an event every later hold of this object shares.
            if self._owner != owner:
                return True
            return bool(renew_script(keys=[self.key], args=[owner, self.ttl_ms])) or self._owner != owner

        self._lease = heartbeat().add(Lease(f"lock {self.name!r}", self.ttl_ms, renew, lost=self.lost))

    def _stop_heartbeat(self) -> None:
        if self._lease is not None:
            heartbeat().remove(self._lease)
            self._lease = None

    def release(self) -> bool:
        """Release the lock if this object still owns it.

        Returns:
            True if released; False if the lease had already expired or been taken
            over (the other holder's lock is left alone, and :attr:`lost` is set).

        Raises:
            LockError: when the lock is not held by this object.
        """
        keys, args = self.release_request()
        return self.release_answered(script_for(self.client, "lock_release")(keys=keys, args=args))

    def release_request(self) -> tuple[list[str], list[Any]]:
        """End this hold here and give the keys and arguments of ``lock_release.lua`` that free it.

        For callers that send the script themselves (a task's completion round trip);
        hand its reply to :meth:`release_answered`. The heartbeat stops at once.

        Raises:
            LockError: when the lock is not held by this object.
        """
        if self._owner is None:
            raise LockError(self.name, "release of a lock this object does not hold")
        self._stop_heartbeat()
        owner, self._owner = self._owner, None
        self.token = None
        return list(self._release_keys), [owner, WAKE_TTL_MS]

    def release_answered(self, status: Any) -> bool:
        """What ``lock_release.lua`` answered: True if released; False if lost (and :attr:`lost` is set)."""
        released = self._released(int(status))
        if not released:
            self.lost.set()
        return released

    def extend(self, ttl: float | timedelta | None = None) -> None:
        """Reset the lease to ``ttl`` (default: the lock's ttl) from now.

        Raises:
            LockLost: the lease was gone or someone else's.
        """
        self.check()
        ms = self.ttl_ms if ttl is None else ttl_ms(ttl)
        if not script_for(self.client, "lease_renew")(keys=[self.key], args=[self._owner, ms]):
            self.lost.set()
            raise LockLost(self.name, "could not extend: the lease had expired or was taken over")

    def locked(self) -> bool:
        """Whether anyone holds the lock now (one EXISTS)."""
        return bool(self.client.exists(self.key))

    # -- asyncio ----------------------------------------------------------------------

    async def aacquire(self, blocking: bool | None = None, timeout: float | timedelta | None = None) -> bool:
        """Asyncio twin of :meth:`acquire` (needs a ``redis.asyncio.Redis`` client)."""
        self._check_client(want_async=True)
        block, deadline = self._resolve(blocking, timeout)
        owner = new_owner()
        script = script_for(self.client, "lock_acquire")
        args = self._acquire_args(owner, block)
        while True:
            kind, value = self._reply(await script(keys=self._acquire_keys, args=args))
            if kind == "granted":
                self._granted(owner, value)
                self._start_async_heartbeat()
                return True
            if kind == "reserve":
                assert self.fence_db is not None
                floor, ceiling = await asyncio.to_thread(fence_store.reserve, self.fence_db, self.name, value)
                args = self._acquire_args(owner, block, str(floor), str(ceiling))
                continue
            args = self._acquire_args(owner, block)
            self._last_pttl = value
            if not block:
                return False
            wait = self._wait_s(deadline, value)
            if wait <= 0:
                return False
            from redis.exceptions import TimeoutError as RedisTimeout

            with contextlib.suppress(RedisTimeout):
                await self.client.blpop([self.wake_key], timeout=max(wait, 0.001))

    def _start_async_heartbeat(self) -> None:
        if not self.renew:
            return
        self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(self._owner))

    async def _renew_loop(self, owner: str | None) -> None:
        script = script_for(self.client, "lease_renew")
        period = self.ttl_ms / 3000.0
        while True:
            await asyncio.sleep(period)
            try:
                ok = await script(keys=[self.key], args=[owner, self.ttl_ms])
            except Exception as exc:  # keep trying until the lease is known lost
                logger.warning("renewal of lock %r failed: %r", self.name, exc)
                period = min(self.ttl_ms / 6000.0, 1.0)
                continue
            if not ok:
                if self._owner != owner:  # released meanwhile: not a loss
                    return
                logger.error("lock %r was lost before it was released", self.name)
                self.lost.set()
                return
            period = self.ttl_ms / 3000.0

    async def arelease(self) -> bool:
        """Asyncio twin of :meth:`release`."""
        if self._owner is None:
            raise LockError(self.name, "release of a lock this object does not hold")
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        owner, self._owner = self._owner, None
        try:
            script = script_for(self.client, "lock_release")
            status = int(await script(keys=self._release_keys, args=[owner, WAKE_TTL_MS]))
        finally:
            self.token = None
        released = self._released(status)
        if not released:
            self.lost.set()
        return released

    async def aextend(self, ttl: float | timedelta | None = None) -> None:
        """Asyncio twin of :meth:`extend`."""
        self.check()
        ms = self.ttl_ms if ttl is None else ttl_ms(ttl)
        if not await script_for(self.client, "lease_renew")(keys=[self.key], args=[self._owner, ms]):
            self.lost.set()
            raise LockLost(self.name, "could not extend: the lease had expired or was taken over")

    async def alocked(self) -> bool:
        """Asyncio twin of :meth:`locked`."""
        return bool(await self.client.exists(self.key))

    async def __aenter__(self) -> RedisLock:
        if not await self.aacquire():
            raise LockNotAcquired(self.name, "held elsewhere", self.retry_after)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        released = await self.arelease()
        if not released and exc_type is None:
            raise LockLost(self.name, "the lease ran out before the block ended; another holder may have run")

    def __repr__(self) -> str:
        state = f"token={self.token}" if self._owner else "not held"
        return f"<RedisLock {self.name!r} ttl={self.ttl_ms}ms {state}>"
