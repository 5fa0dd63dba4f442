"""Counters of reliability decisions, fed by :func:`celery_reliable.events.emit`.

Every decision already goes through ``emit``; :func:`count` turns its event into a sample.
Until :func:`enable` runs (the worker bootstep does, in the parent, when
``reliable_metrics_port`` is set) :func:`count` returns at once and ``prometheus_client``
is not even imported. Counters are created with ``registry=None``: they are served through
the multiprocess collector (see :mod:`celery_reliable.metrics.server`), never twice.

Counters (labels in braces):

- ``reliable_deduplicated_total{task, source}``: duplicates answered without running the
  body; ``source`` is ``idempotency`` (a stored result replayed) or ``inbox``.
- ``reliable_deferred_total{task, reason}``: deliveries parked instead of run; ``reason``
  is ``key-in-progress``, ``locked``, ``rate-limited``, ``redis-unavailable``,
  ``circuit-open`` or ``bulkhead-full``.
- ``reliable_defer_delay_seconds{task, reason}`` (histogram): how long each was parked
  for; ``reason="locked"`` is the lock wait (as scheduled: a release wakes it sooner).
- ``reliable_rate_limited_total{task, reason}``: limiter rejections (``rate-limited``, or
  ``redis-unavailable`` when the limiter could not be asked).
- ``reliable_circuit_open_total{task, breaker, outcome}``: calls refused by an open
  breaker; ``outcome`` is ``deferred`` or ``fallback``.
- ``reliable_bulkhead_full_total{task, bulkhead, outcome}``: tasks that found their
  bulkhead full (``deferred`` or ``fallback``; rejected ones are dead letters).
- ``reliable_dead_lettered_total{task, reason}``: tasks dead-lettered.
- ``reliable_lock_skipped_total{task}`` and ``reliable_lock_lost_total{task}``.
- ``reliable_circuit_transitions_total{breaker, state, reason}``: breaker transitions
  into ``state``, counted once by the process whose call made them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("celery_reliable")

#: Events whose ``delay_ms`` field means the task was parked (or sent back) for later.
DEFERRING_EVENTS = frozenset({"task-deferred", "task-rate-limited", "task-circuit-open", "task-bulkhead-full"})

#: Buckets of ``reliable_defer_delay_seconds`` (seconds).
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


class Counters:
    """The counters of one process (created by :func:`enable`)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        def counter(name: str, doc: str, *labels: str) -> Any:
            return Counter(name, doc, labels, registry=None)

        self.deduplicated = counter("reliable_deduplicated", "Duplicates answered without running", "task", "source")
        self.deferred = counter("reliable_deferred", "Deliveries parked instead of run", "task", "reason")
        self.delay = Histogram(
            "reliable_defer_delay_seconds",
            "How long deliveries were parked for (reason=locked: the lock wait)",
            ("task", "reason"),
            registry=None,
            buckets=DELAY_BUCKETS,
        )
        self.rate_limited = counter("reliable_rate_limited", "Rate limiter rejections", "task", "reason")
        self.circuit_open = counter(
            "reliable_circuit_open", "Calls refused by an open breaker", "task", "breaker", "outcome"
        )
        self.bulkhead_full = counter(
            "reliable_bulkhead_full", "Tasks that found their bulkhead full", "task", "bulkhead", "outcome"
        )
        self.dead_lettered = counter("reliable_dead_lettered", "Tasks dead-lettered", "task", "reason")
        self.lock_skipped = counter("reliable_lock_skipped", "Runs skipped because the lock was held", "task")
        self.lock_lost = counter("reliable_lock_lost", "Locks lost while the body ran", "task")
        self.transitions = counter(
            "reliable_circuit_transitions", "Circuit breaker transitions", "breaker", "state", "reason"
        )

    def record(self, task: str, type_: str, fields: Mapping[str, Any]) -> None:
        """Count one event of ``task`` (its type and fields as :func:`~celery_reliable.events.emit` got them)."""
        reason = str(fields.get("reason", ""))
        if type_ in DEFERRING_EVENTS and "delay_ms" in fields:
            self.deferred.labels(task, reason).inc()
            self.delay.labels(task, reason).observe(max(0.0, float(fields["delay_ms"]) / 1000))
        outcome = "fallback" if reason == "fallback" else "deferred"
        if type_ == "task-deduplicated":
            self.deduplicated.labels(task, "inbox" if reason == "inbox" else "idempotency").inc()
        elif type_ == "task-rate-limited":
            self.rate_limited.labels(task, reason).inc()
        elif type_ == "task-circuit-open":
            self.circuit_open.labels(task, str(fields.get("breaker", "")), outcome).inc()
        elif type_ == "task-bulkhead-full":
            self.bulkhead_full.labels(task, str(fields.get("bulkhead", "")), outcome).inc()
        elif type_ == "task-dead-lettered":
            self.dead_lettered.labels(task, reason).inc()
        elif type_ == "task-lock-skipped":
            self.lock_skipped.labels(task).inc()
        elif type_ == "task-lock-lost":
            self.lock_lost.labels(task).inc()
        elif type_ == "reliable-circuit-changed":
            self.transitions.labels(str(fields.get("breaker", "")), str(fields.get("new_state", "")), reason).inc()


_counters: Counters | None = None


def enable() -> Counters:
    """Create the counters (idempotent). Call it before the pool forks: children inherit them."""
    global _counters
    if _counters is None:
        _counters = Counters()
    return _counters


def disable() -> None:
    """Stop counting (the counters already written stay where they are)."""
    global _counters
    _counters = None


def count(task: str, type_: str, fields: Mapping[str, Any]) -> None:
    """Count an event when metrics are on; never raises (a metric is not worth a task)."""
    counters = _counters
    if counters is None:
        return
    try:
        counters.record(task, type_, fields)
    except Exception as exc:
        logger.debug("celery-reliable: could not count %s: %r", type_, exc)
