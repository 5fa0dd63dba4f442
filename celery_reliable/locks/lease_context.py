"""The ``with`` statement of the Redis locks: acquire or fail, release, and report a lost lease."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from ..errors import LockLost, LockNotAcquired


class LeaseContext:
    """``with`` for a lock with ``acquire()``, ``release()``, ``name`` and ``retry_after``.

    Entering acquires (blocking as configured) or raises :class:`LockNotAcquired`;
    leaving releases, and raises :class:`LockLost` when the lease had run out before the
    block ended and nothing else was raised (the block ran without the lock for a while).
    """

    name: str

    def acquire(self) -> bool:  # pragma: no cover - implemented by the lock
        raise NotImplementedError

    def release(self) -> bool:  # pragma: no cover - implemented by the lock
        raise NotImplementedError

    def __enter__(self) -> Self:
        if not self.acquire():
            raise LockNotAcquired(self.name, "held elsewhere", getattr(self, "retry_after", None))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        released = self.release()
        if not released and exc_type is None:
            raise LockLost(self.name, "the lease ran out before the block ended; another holder may have run")
