"""Bulkhead: a cluster-wide cap on concurrent holders, as leases in one Redis sorted set.

Every operation is one Lua script (``lua/bulkhead_*.lua``) on the Redis server's clock:
acquire drops expired leases, counts and leases in one round trip; release and renew
act only on their own owner token. A holder that dies without releasing (SIGKILL, a
lost machine) gives its slot back when its lease runs out; a live holder keeps its slot
by renewing, which :meth:`Bulkhead.hold` and ``with bulkhead:`` do through the process's
heartbeat.
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, overload

from ..errors import ConfigurationError
from ..locks.redis_lock import new_owner
from ..ratelimit.base import C, UnknownClient
from ..scripts import script_for
from .holding import Holding
from .names import check_name, check_size, hold_key, lease_ms, slots_key
from .slot import Admission, Slot

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis


#: The shortest ``retry_after`` a full bulkhead answers (unless a lease runs out sooner), in ms.
MIN_RETRY_AFTER_MS = 50


class Bulkhead(Generic[C]):
    """At most ``size`` holders at once across every process sharing the Redis.

    With a ``redis.Redis`` client the methods return their answer; with a
    ``redis.asyncio.Redis`` one they return a coroutine to await (as redis-py's own
    commands do). The object holds no per-hold state, so one bulkhead is shared by every
    thread and task of a process.

    Args:
        name: what the bulkhead protects (``"critical"``, ``"payments-api"``); bulkheads
            with the same name and prefix share their slots.
        size: the most slots leased at once (a positive int).
        lease: seconds (or a timedelta) a slot stays leased without a renewal; a dead
            holder's slot comes back after it (default 30 s, between 0.1 s and a day).
        client: ``redis.Redis`` or ``redis.asyncio.Redis``.
        prefix: first part of the Redis keys.

    Raises:
        ConfigurationError: for a bad name, size, lease, prefix or client.

    Example::

        payments = Bulkhead("payments", 10, client=redis_client)
        with payments:                 # BulkheadFull(name, size, retry_after) when full
            call_the_bank()
    """

    def __init__(
        self,
        name: str,
        size: int,
        *,
        lease: float | timedelta = 30.0,
        client: C,
        prefix: str = "reliable",
    ) -> None:
        if client is None or not hasattr(client, "register_script"):
            raise ConfigurationError("client", f"expected a redis.Redis or redis.asyncio.Redis, got {client!r}")
        self.client = client
        self.name = check_name(name)
        self.size = check_size(size)
        self.lease_ms = lease_ms(lease)
        self.prefix = check_name(prefix, "prefix")
        self.key = slots_key(self.prefix, self.name)
        self.hold_key = hold_key(self.key)
        self.is_async = inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        self._held: ContextVar[tuple[Holding, ...]] = ContextVar(f"bulkhead {self.name}", default=())

    def __repr__(self) -> str:
        return f"<Bulkhead {self.name!r} size={self.size} lease={self.lease_ms}ms>"

    # -- one script per operation ---------------------------------------------------

    def _run(self, script: str, keys: list[str], args: list[Any], then: Any) -> Any:
        reply = script_for(self.client, script)(keys=keys, args=args)
        if self.is_async:
            return self._later(reply, then)
        return then(reply)

    @staticmethod
    async def _later(reply: Any, then: Any) -> Any:
        return then(await reply)

    @overload
    def try_acquire(self: Bulkhead[UnknownClient], owner: str | None = None) -> Any: ...
    @overload
    def try_acquire(self: Bulkhead[Redis], owner: str | None = None) -> Admission: ...
    @overload
    def try_acquire(self: Bulkhead[AsyncRedis], owner: str | None = None) -> Coroutine[Any, Any, Admission]: ...
    @overload
    def try_acquire(self, owner: str | None = None) -> Any: ...

    def try_acquire(self, owner: str | None = None) -> Any:
        """Lease a slot if one is free, in one round trip; never waits.

        Args:
            owner: the owner token (default: a new unique one). An owner that already
                holds a slot gets its lease extended, not a second slot.

        Returns:
            An :class:`Admission`, truthy with its ``slot`` when acquired, otherwise with
            ``retry_after``; with an asyncio client, a coroutine resolving to it. The slot
            is not renewed: use :meth:`renew`, or :meth:`hold` / ``with`` which do.

        Raises:
            ConfigurationError: for a bad owner token.
        """
        token = new_owner() if owner is None else check_name(owner, "owner")
        keys, args = self.acquire_request(token)
        return self._run("bulkhead_acquire", keys, args, lambda reply: self.admission_of(token, reply))

    def acquire_request(self, owner: str) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``bulkhead_acquire.lua`` for ``owner`` (a checked token).

        For callers that run the script themselves (a task's admission round trip);
        hand the script's reply to :meth:`admission_of`.
        """
        return [self.key, self.hold_key], [owner, self.size, self.lease_ms]

    def admission_of(self, owner: str, reply: list[Any]) -> Admission:
        """The :class:`Admission` ``bulkhead_acquire.lua`` answered for ``owner``."""
        acquired, in_use, likely_ms, earliest_ms, now_ms = (int(x) for x in reply)
        if acquired == 1:
            slot = Slot(self.name, owner, self.lease_ms, now_ms)
            return Admission(True, in_use, self.size, 0.0, 0.0, now_ms / 1000, slot)
        # Not sooner than MIN_RETRY_AFTER_MS (short holds would make callers spin),
        # unless the earliest lease runs out sooner still.
        retry_ms = min(max(likely_ms, MIN_RETRY_AFTER_MS), earliest_ms)
        return Admission(False, in_use, self.size, retry_ms / 1000, earliest_ms / 1000, now_ms / 1000)

    @overload
    def release(self: Bulkhead[UnknownClient], slot: Slot) -> Any: ...
    @overload
    def release(self: Bulkhead[Redis], slot: Slot) -> bool: ...
    @overload
    def release(self: Bulkhead[AsyncRedis], slot: Slot) -> Coroutine[Any, Any, bool]: ...
    @overload
    def release(self, slot: Slot) -> Any: ...

    def release(self, slot: Slot) -> Any:
        """Give ``slot`` back, in one round trip; a slot of another owner is left alone.

        Returns:
            True if the slot was released while its lease ran; False if it was no longer
            held (its lease had run out, or the token is not a holder's), and then
            ``slot.lost`` is set. With an asyncio client, a coroutine resolving to it.
        """
        keys, args = self.release_request(slot)
        return self._run("bulkhead_release", keys, args, lambda status: self.release_answered(slot, status))

    def release_request(self, slot: Slot) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``bulkhead_release.lua`` for ``slot`` (see :meth:`release_answered`).

        Raises:
            ConfigurationError: for a slot of another bulkhead.
        """
        self._check_slot(slot)
        return [self.key, self.hold_key], [slot.owner, slot.acquired_at_ms]

    def release_answered(self, slot: Slot, status: Any) -> bool:
        """What ``bulkhead_release.lua`` answered for ``slot``: True if released, else False (``slot.lost`` set)."""
        if int(status) != 1:
            slot.lost.set()
            return False
        return True

    @overload
    def renew(self: Bulkhead[UnknownClient], slot: Slot) -> Any: ...
    @overload
    def renew(self: Bulkhead[Redis], slot: Slot) -> bool: ...
    @overload
    def renew(self: Bulkhead[AsyncRedis], slot: Slot) -> Coroutine[Any, Any, bool]: ...
    @overload
    def renew(self, slot: Slot) -> Any: ...

    def renew(self, slot: Slot) -> Any:
        """Extend ``slot``'s lease to a full lease from now, in one round trip.

        Returns:
            True if extended; False if the slot was no longer held (its lease had run
            out, or it was released), and then ``slot.lost`` is set. With an asyncio
            client, a coroutine resolving to it.
        """
        self._check_slot(slot)

        def done(extended: bool) -> bool:
            if not extended:
                slot.lost.set()
            return extended

        return self._run("bulkhead_renew", [self.key], [slot.owner, slot.lease_ms], lambda status: done(status == 1))

    def _extend(self, slot: Slot) -> Any:
        """:meth:`renew` without marking ``slot.lost`` (the caller decides whether it is a loss)."""
        return self._run("bulkhead_renew", [self.key], [slot.owner, slot.lease_ms], lambda status: int(status) == 1)

    @overload
    def in_use(self: Bulkhead[UnknownClient]) -> Any: ...
    @overload
    def in_use(self: Bulkhead[Redis]) -> int: ...
    @overload
    def in_use(self: Bulkhead[AsyncRedis]) -> Coroutine[Any, Any, int]: ...
    @overload
    def in_use(self) -> Any: ...

    def in_use(self) -> Any:
        """The slots whose lease still runs (one read-only script; expired ones are not counted).

        Returns:
            The count; with an asyncio client, a coroutine resolving to it.
        """
        return self._run("bulkhead_count", [self.key], [], lambda reply: int(reply[0]))

    def _check_slot(self, slot: Slot) -> None:
        if not isinstance(slot, Slot) or slot.bulkhead != self.name:
            raise ConfigurationError("slot", f"expected a Slot of bulkhead {self.name!r}, got {slot!r}")

    # -- holding a slot while a body runs -------------------------------------------

    def hold(self, owner: str | None = None, *, renew: bool = True) -> Holding:
        """A context manager (``with`` or ``async with``) leasing a slot for its block.

        Entering acquires or raises :class:`~celery_reliable.errors.BulkheadFull`, and
        returns the :class:`Slot`; while the block runs the slot is renewed every third
        of its lease (the process's heartbeat thread with a sync client, a task on the
        running loop with an asyncio one), and ``slot.lost`` is set if a renewal finds
        it gone; leaving releases it.

        Args:
            owner: the owner token (default: a new unique one).
            renew: keep renewing while the block runs (default True).
        """
        return Holding(self, owner, renew=renew)

    def __enter__(self) -> Slot:
        holding = self.hold()
        slot = holding.__enter__()
        self._held.set((*self._held.get(), holding))
        return slot

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, holding = self._held.get()
        self._held.set(tuple(rest))
        holding.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Slot:
        holding = self.hold()
        slot = await holding.__aenter__()
        self._held.set((*self._held.get(), holding))
        return slot

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, holding = self._held.get()
        self._held.set(tuple(rest))
        await holding.__aexit__(exc_type, exc, tb)
