"""Renew the leases a process holds while its tasks run.

One daemon thread per process renews every registered lease at a third of its length.
A lease that cannot be renewed (it expired, or someone else holds it now) is marked
lost, so the holder finds out instead of carrying on blindly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Lease:
    """One renewable lease.

    Attributes:
        name: what the lease protects (for logs).
        lease_ms: the lease's length.
        renew: callable that extends the lease and returns ``False`` if it was lost.
        lost: set once a renewal found the lease gone.
    """

    name: str
    lease_ms: int
    renew: Callable[[], bool]
    lost: threading.Event = field(default_factory=threading.Event)
    next_at: float = 0.0


class Heartbeat:
    """The per-process renewal thread and its registry of leases."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._wakes_at = 0.0  # when the thread looks next (monotonic), set under _lock
        self._version = 0  # bumped by add(), so a scan that missed a new lease repeats

    def add(self, lease: Lease) -> Lease:
        """Start renewing ``lease``; returns it."""
        lease.next_at = time.monotonic() + lease.lease_ms / 3000.0
        with self._lock:
            self._leases[id(lease)] = lease
            self._version += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="reliable-heartbeat", daemon=True)
                self._thread.start()
                return lease
            # Waking the thread costs a thread switch per task: only when it would look too
            # late. A thread still scanning sees the new version and scans again.
            late = lease.next_at < self._wakes_at
        if late:
            self._wake.set()
        return lease

    def remove(self, lease: Lease) -> None:
        """Stop renewing ``lease``."""
        with self._lock:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                leases = list(self._leases.values())
                seen = self._version
            now = time.monotonic()
            wait = 1.0
            for lease in leases:
                if lease.lost.is_set():
                    continue
                if lease.next_at <= now:
                    try:
                        ok = lease.renew()
                    except Exception as exc:  # keep renewing the others; retry soon
                        logger.warning("lease renewal of %s failed: %r", lease.name, exc)
                        lease.next_at = now + min(lease.lease_ms / 6000.0, 1.0)
                        continue
                    if not ok:
                        logger.error("lease of %s was lost before the work finished", lease.name)
                        lease.lost.set()
                        continue
                    lease.next_at = now + lease.lease_ms / 3000.0
                wait = min(wait, max(lease.next_at - now, 0.01))
            with self._lock:
                if self._version != seen:  # a lease was added while we scanned: look again
                    continue
                self._wakes_at = now + wait
            self._wake.wait(wait)
            self._wake.clear()


_heartbeat: Heartbeat | None = None


def heartbeat() -> Heartbeat:
    """Return this process's heartbeat (a new one after a fork)."""
    global _heartbeat
    if _heartbeat is None or _heartbeat._pid != os.getpid():
        _heartbeat = Heartbeat()
    return _heartbeat
