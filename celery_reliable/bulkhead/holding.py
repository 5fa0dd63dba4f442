"""Hold a bulkhead slot for the length of a block, renewed while the block runs."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import BulkheadFull, ConfigurationError
from ..heartbeat import Lease, heartbeat
from .slot import Admission, Slot

if TYPE_CHECKING:
    from .bulkhead import Bulkhead

logger = logging.getLogger("celery_reliable.bulkhead")


class Holding:
    """One use of a bulkhead's slot: ``with`` (sync client) or ``async with`` (asyncio client).

    Made by :meth:`Bulkhead.hold`; single use. Leaving never raises for a lost slot (the
    block's work is done by then): check ``slot.lost`` where it matters, and see the
    warning logged.

    Attributes:
        admission: the acquire's answer, once entered.
        slot: the slot, while held.
    """

    def __init__(self, bulkhead: Bulkhead[Any], owner: str | None, *, renew: bool = True) -> None:
        self.bulkhead = bulkhead
        self.owner = owner
        self.renew = renew
        self.admission: Admission | None = None
        self.slot: Slot | None = None
        self._lease: Lease | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._done = False

    def _granted(self, admission: Admission) -> Slot:
        if self.admission is not None:
            raise ConfigurationError("hold", "a Holding is single use; call bulkhead.hold() again")
        self.admission = admission
        if admission.slot is None:
            raise BulkheadFull(self.bulkhead.name, self.bulkhead.size, admission.retry_after)
        self.slot = admission.slot
        return self.slot

    def _check_client(self, want_async: bool) -> None:
        if self.bulkhead.is_async != want_async:
            raise ConfigurationError(
                "client",
                "async with needs a redis.asyncio.Redis client"
                if want_async
                else "with needs a redis.Redis client; use async with",
            )

    def _log_lost(self, slot: Slot) -> None:
        logger.warning(
            "bulkhead %r: the slot of %s was lost before the block ended (lease %d ms); "
            "the cap of %d may have been exceeded meanwhile",
            self.bulkhead.name,
            slot.owner,
            slot.lease_ms,
            self.bulkhead.size,
        )

    # -- sync ---------------------------------------------------------------------------

    def __enter__(self) -> Slot:
        self._check_client(want_async=False)
        slot = self._granted(self.bulkhead.try_acquire(self.owner))
        if self.renew:
            self._lease = heartbeat().add(
                Lease(f"bulkhead {self.bulkhead.name!r}", slot.lease_ms, self._renew_once, lost=slot.lost)
            )
        return slot

    def _renew_once(self) -> bool:
        # The heartbeat may run a renewal it took from its registry just before our
        # release: a slot released by us is no loss.
        slot = self.slot
        if self._done or slot is None:
            return True
        return bool(self.bulkhead._extend(slot)) or self._done

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        slot = self.slot
        if slot is None:
            return
        if self._lease is not None:
            heartbeat().remove(self._lease)
            self._lease = None
        self._done = True
        if not self.bulkhead.release(slot):
            self._log_lost(slot)
        self.slot = None

    # -- asyncio --------------------------------------------------------------------------

    async def __aenter__(self) -> Slot:
        self._check_client(want_async=True)
        slot = self._granted(await self.bulkhead.try_acquire(self.owner))
        if self.renew:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(slot))
        return slot

    async def _renew_loop(self, slot: Slot) -> None:
        period = slot.lease_ms / 3000
        while not self._done:
            await asyncio.sleep(period)
            try:
                ok = await self.bulkhead._extend(slot)
            except Exception as exc:  # keep trying until the lease is known lost
                logger.warning("renewal of a slot of bulkhead %r failed: %r", self.bulkhead.name, exc)
                period = min(slot.lease_ms / 6000, 1.0)
                continue
            if not ok:
                if not self._done:
                    slot.lost.set()
                return
            period = slot.lease_ms / 3000

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        slot = self.slot
        if slot is None:
            return
        self._done = True
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if not await self.bulkhead.release(slot):
            self._log_lost(slot)
        self.slot = None
