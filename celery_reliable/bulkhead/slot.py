"""What a bulkhead hands out (a :class:`Slot`) and what it answers (an :class:`Admission`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Slot:
    """One leased slot of a bulkhead.

    Attributes:
        bulkhead: the bulkhead's name.
        owner: the owner token; only this token releases or renews the slot.
        lease_ms: the lease's length.
        acquired_at_ms: server time (Unix milliseconds) of the acquire.
        lost: set when a renewal or the release found the lease gone (the holder ran
            for a while without its slot, so the cap may have been exceeded).
    """

    bulkhead: str
    owner: str
    lease_ms: int
    acquired_at_ms: int
    lost: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Admission:
    """A bulkhead's answer to one acquire; truthy when a slot was leased.

    Times are seconds, measured on the Redis server's clock by the script that decided.

    Attributes:
        acquired: whether a slot was leased.
        in_use: slots leased after this decision (this one included when acquired).
        size: the bulkhead's size.
        retry_after: 0 when acquired; otherwise the seconds until a slot is likely
            free: the average hold (kept by the releases) divided by the holders, at
            least 50 ms, and never later than the earliest lease's end (or than one
            second while no hold has been measured yet). Waiting that long, rather than for a lease
            to run out, brings a deferred task back about when a release frees a slot,
            so newcomers do not take every freed slot first.
        earliest_expiry: 0 when acquired; otherwise the seconds until the earliest lease
            runs out (the latest a slot can come back without a release).
        at: server time of the decision (Unix seconds, millisecond precision).
        slot: the slot, when acquired.
    """

    acquired: bool
    in_use: int
    size: int
    retry_after: float
    earliest_expiry: float
    at: float
    slot: Slot | None = None

    def __bool__(self) -> bool:
        return self.acquired
