"""The pump: moves due tasks from the deferred set back to their queues."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING

from celery import signature

from .store import DeferredSet

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

# A prefork parent forks new children at any moment (respawns after a crash, or
# max_tasks_per_child). A child forked while the pump thread held a lock (the import
# lock during a lazy import, a connection pool's lock) would inherit it held and hang.
# Forks wait for the pump's current step to finish instead.
_fork_guard = threading.Lock()


def _reinit_guard() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _fork_guard.acquire(),
        after_in_parent=lambda: _fork_guard.release(),
        after_in_child=_reinit_guard,
    )

#: True while the pump publishes a parked task again: work already accepted, which
#: ``max_queue_depth`` does not refuse.
republishing: ContextVar[bool] = ContextVar("celery_reliable_republishing", default=False)

#: Sleeps up to this long (seconds) are timed locally, not by a blocking Redis command.
SHORT_SLEEP = 0.25

#: Seconds between sweeps of expired in-flight leases (and the Redis warmth check).
MAINTENANCE_EVERY = 5.0


def publish_entry(app: Celery, raw: bytes, producer: object = None) -> None:
    """Publish one deferred entry as the task message it was, same task id and retries.

    Raises:
        ValueError: when the entry is not a deferred-set entry.
        Exception: whatever the broker raised while publishing.
    """
    data = DeferredSet.decode(raw)
    sig = dict(data["sig"])
    name = sig.get("task")
    if not isinstance(name, str):
        raise ValueError("deferred entry names no task")
    options = dict(sig.get("options") or {})
    token = republishing.set(True)
    try:
        if name in app.tasks:
            signature(sig, app=app).apply_async(producer=producer)
        else:  # published by another app with tasks we do not import: send by name
            app.send_task(name, sig.get("args") or (), sig.get("kwargs") or {}, producer=producer, **options)
    finally:
        republishing.reset(token)


class Pump:
    """Moves due entries to their queues, sweeps stale leases, re-warms Redis.

    After a step that left nothing due, the pump sleeps until the earliest parked entry
    is due (as the step's script measured it on the Redis server's clock), at most
    ``interval``. It sleeps blocked on the deferred set's wake list, so an entry parked
    due sooner, or :meth:`stop`, wakes it at once.

    Args:
        app: the Celery app whose producer pool publishes.
        deferred: the deferred set.
        interval: longest sleep, in seconds, when nothing is due sooner.
        batch: most entries moved per step.
        lease_ms: how long a taken entry may stay in flight.
        on_maintenance: called every few seconds (Redis warm-up and the like).
    """

    def __init__(
        self,
        app: Celery,
        deferred: DeferredSet,
        interval: float,
        batch: int,
        lease_ms: int,
        on_maintenance: object = None,
    ) -> None:
        self.app = app
        self.deferred = deferred
        self.interval = interval
        self.batch = batch
        self.lease_ms = lease_ms
        self.on_maintenance = on_maintenance
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_key = deferred.own_wake_key(uuid.uuid4().hex)
        self.moved = 0
        #: Milliseconds until the next parked entry is due, as of the last step (``None``: none parked).
        self.next_due_ms: int | None = None

    def step(self) -> int:
        """Move one batch of due entries; returns how many were published."""
        entries = self.deferred.take(self.batch, self.lease_ms)
        self.next_due_ms = getattr(entries, "next_due_ms", None)
        if not entries:
            return 0
        sent: list[bytes] = []
        with self.app.producer_or_acquire() as producer:
            for raw in entries:
                try:
                    publish_entry(self.app, raw, producer)
                except (ValueError, KeyError, TypeError) as exc:
                    logger.error("deferred entry cannot be sent, kept in the broken set: %r", exc)
                    self.deferred.bury(raw)
                    continue
                except Exception as exc:  # broker trouble: the sweep puts it back later
                    logger.warning("publishing a deferred task failed, it will be retried: %r", exc)
                    continue
                sent.append(raw)
        self.deferred.ack(sent)
        self.moved += len(sent)
        return len(sent)

    def pause(self, moved: int) -> float:
        """Seconds to sleep after a step that published ``moved``: until the next entry is due, at most ``interval``.

        More entries due at once mean no sleep, unless the step published none of its batch
        (the broker is failing): then the pump waits its interval as it would when idle.
        """
        if self.next_due_ms is None or (self.next_due_ms == 0 and not moved):
            return self.interval
        if self.next_due_ms == 0:
            return 0.0
        return min(self.interval, (self.next_due_ms + 1) / 1000.0)  # +1 ms: never wake a hair too early

    def run(self) -> None:
        """Loop until :meth:`stop`; survives Redis and broker outages."""
        next_maintenance = 0.0
        while not self._stop.is_set():
            try:
                with _fork_guard:
                    moved = self.step()
                    now = time.monotonic()
                    if now >= next_maintenance:
                        next_maintenance = now + MAINTENANCE_EVERY
                        self.deferred.sweep()
                        if callable(self.on_maintenance):
                            self.on_maintenance()
                pause = self.pause(moved)
            except Exception as exc:
                logger.warning("deferred-set pump step failed: %r", exc)
                self.next_due_ms = None
                pause = self.interval
            self._sleep(pause)

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, woken early by a wake token or :meth:`stop`.

        Short sleeps happen here: Redis checks the timeouts of blocked commands only about
        every 100 ms (its ``hz``), so a BLPOP of 20 ms would return up to 100 ms late and
        every parked task due soon would be published that late.
        """
        if seconds <= 0 or self._stop.is_set():
            return
        if seconds <= SHORT_SLEEP:
            self._stop.wait(seconds)
            return
        try:
            self.deferred.wait_for_wake(seconds, self._own_key)
        except Exception as exc:  # Redis is down: sleep here; the next step reports it
            logger.debug("pump could not wait on Redis: %r", exc)
            self._stop.wait(seconds)

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="reliable-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (waking it if it sleeps) and wait for it."""
        self._stop.set()
        try:
            self.deferred.wake_own(self._own_key)
        except Exception as exc:  # Redis is down: the loop is not blocked on it either
            logger.debug("pump could not be woken through Redis: %r", exc)
        if self._thread is not None:
            self._thread.join(timeout)
