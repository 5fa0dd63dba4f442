"""Gauges read at scrape time, from a :class:`Source` (the backends), cached for a few seconds.

Gauges (labels in braces):

- ``reliable_deferred_backlog{state}``: entries in the deferred set; ``state`` is
  ``due`` (parked), ``inflight`` (taken by a pump, not yet acknowledged) or ``broken``.
- ``reliable_dead_letters{reason}``: dead letters kept in the database.
- ``reliable_circuit_state{breaker, state}``: 1 for the breaker's current state
  (``closed``, ``open``, ``half_open``), 0 for the others.
- ``reliable_bulkhead_slots_in_use{bulkhead}`` and ``reliable_bulkhead_slots{bulkhead}``:
  slots whose lease runs, and the bulkhead's size.
- ``reliable_outbox_pending``, ``reliable_outbox_dead``, ``reliable_outbox_lag_seconds``:
  outbox rows waiting and parked as dead, and the age of the oldest waiting row.
- ``reliable_queue_depth{queue}``: messages waiting in a broker queue.

And the counter ``reliable_scrape_errors_total{part}``: parts whose backend could not be
read (that part's gauges are left out of the scrape; the rest is served).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

logger = logging.getLogger("celery_reliable")

#: How long a reading of the backends is served again (seconds).
CACHE_SECONDS = 2.0

#: The states a breaker can be in (``reliable_circuit_state``).
BREAKER_STATES = ("closed", "open", "half_open")


class Source(Protocol):
    """What the collector reads; each method reads one backend and may raise."""

    def deferred(self) -> Mapping[str, int]:
        """Deferred-set sizes by state."""

    def dead_letters(self) -> Mapping[str, int] | None:
        """Dead letters by reason; ``None`` without a database."""

    def breakers(self) -> Mapping[str, str]:
        """Breaker name to its state."""

    def bulkheads(self) -> Mapping[str, tuple[int, int]]:
        """Bulkhead name to (slots in use, size)."""

    def outbox(self) -> Mapping[str, float] | None:
        """``pending``, ``dead`` and ``lag_seconds``; ``None`` without an outbox."""

    def queue_depths(self) -> Mapping[str, int]:
        """Queue name to messages waiting."""


class ReliableCollector:
    """A ``prometheus_client`` collector of celery-reliable's gauges.

    Args:
        source: where the values come from (:class:`~celery_reliable.metrics.sources.AppSource`).
        cache_seconds: serve one reading for this long (scrapes from several Prometheus
            servers, or a fast scrape interval, do not multiply the backend reads).
        clock: a monotonic clock (tests).
    """

    def __init__(
        self, source: Source, cache_seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.source = source
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._cached: list[Any] | None = None
        self._read_at = 0.0

    def describe(self) -> list[Any]:
        """Nothing: registering the collector must not read the backends."""
        return []

    def collect(self) -> Iterator[Any]:
        """The gauges (from cache when fresh) and the scrape-error counter."""
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._read_at >= self.cache_seconds:
                self._cached = list(self._read())
                self._read_at = now
            cached = self._cached
            errors = CounterMetricFamily("reliable_scrape_errors", "Backend reads that failed", labels=["part"])
            for part, n in sorted(self.errors.items()):
                errors.add_metric([part], n)
        yield from cached
        yield errors

    def _read(self) -> Iterator[Any]:
        parts: list[tuple[str, Callable[[], list[Any]]]] = [
            ("deferred", self._deferred),
            ("dead_letters", self._dead_letters),
            ("breakers", self._breakers),
            ("bulkheads", self._bulkheads),
            ("outbox", self._outbox),
            ("queue_depth", self._queue_depths),
        ]
        for part, read in parts:
            try:
                families = read()
            except Exception as exc:  # a backend that is down loses its gauges, not the scrape
                self.errors[part] = self.errors.get(part, 0) + 1
                logger.debug("celery-reliable metrics: could not read %s: %r", part, exc)
                continue
            yield from families

    def _deferred(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("reliable_deferred_backlog", "Entries in the deferred set", labels=["state"])
        for state, n in sorted(self.source.deferred().items()):
            g.add_metric([state], n)
        return [g]

    def _dead_letters(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        counts = self.source.dead_letters()
        if counts is None:
            return []
        g = GaugeMetricFamily("reliable_dead_letters", "Dead letters kept, by reason", labels=["reason"])
        for reason, n in sorted(counts.items()):
            g.add_metric([reason], n)
        return [g]

    def _breakers(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("reliable_circuit_state", "1 for a breaker's current state", labels=["breaker", "state"])
        for name, current in sorted(self.source.breakers().items()):
            for state in BREAKER_STATES:
                g.add_metric([name, state], 1.0 if state == current else 0.0)
        return [g]

    def _bulkheads(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("reliable_bulkhead_slots_in_use", "Bulkhead slots held", labels=["bulkhead"])
        size = GaugeMetricFamily("reliable_bulkhead_slots", "Bulkhead size", labels=["bulkhead"])
        for name, (in_use, slots) in sorted(self.source.bulkheads().items()):
            used.add_metric([name], in_use)
            size.add_metric([name], slots)
        return [used, size]

    def _outbox(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        status = self.source.outbox()
        if status is None:
            return []
        return [
            GaugeMetricFamily("reliable_outbox_pending", "Outbox rows waiting to be published", status["pending"]),
            GaugeMetricFamily("reliable_outbox_dead", "Outbox rows parked as dead", status["dead"]),
            GaugeMetricFamily("reliable_outbox_lag_seconds", "Age of the oldest waiting row", status["lag_seconds"]),
        ]

    def _queue_depths(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("reliable_queue_depth", "Messages waiting in a broker queue", labels=["queue"])
        for queue, n in sorted(self.source.queue_depths().items()):
            g.add_metric([queue], n)
        return [g]
