"""Counting reliability events: which event feeds which counter, with which labels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_reliable.metrics import counters


@pytest.fixture()
def on() -> Iterator[counters.Counters]:
    counters.disable()
    yield counters.enable()
    counters.disable()


def value(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


def test_nothing_is_counted_until_enabled() -> None:
    counters.disable()
    counters.count("t", "task-deduplicated", {})  # no error, no prometheus_client needed
    assert counters._counters is None


def test_duplicates_by_source(on: counters.Counters) -> None:
    counters.count("charge", "task-deduplicated", {"key": "k", "original_task_id": "x"})
    counters.count("charge", "task-deduplicated", {"key": "k", "original_task_id": "x"})
    counters.count("charge", "task-deduplicated", {"reason": "inbox", "message_id": "m"})
    assert value(on.deduplicated, "charge", "idempotency") == 2
    assert value(on.deduplicated, "charge", "inbox") == 1


def test_every_parking_is_a_deferral_with_its_delay(on: counters.Counters) -> None:
    counters.count("t", "task-deferred", {"reason": "locked", "delay_ms": 1500})
    counters.count("t", "task-rate-limited", {"reason": "rate-limited", "delay_ms": 40})
    counters.count("t", "task-circuit-open", {"reason": "circuit-open", "delay_ms": 900, "breaker": "b"})
    counters.count("t", "task-bulkhead-full", {"reason": "bulkhead-full", "delay_ms": 50, "bulkhead": "narrow"})
    counters.count("t", "task-circuit-open", {"reason": "fallback", "breaker": "b"})  # answered, not parked
    for reason in ("locked", "rate-limited", "circuit-open", "bulkhead-full"):
        assert value(on.deferred, "t", reason) == 1
    assert value(on.deferred, "t", "fallback") == 0
    assert on.delay.labels("t", "locked")._sum.get() == 1.5
    assert value(on.rate_limited, "t", "rate-limited") == 1
    assert value(on.circuit_open, "t", "b", "deferred") == 1
    assert value(on.circuit_open, "t", "b", "fallback") == 1
    assert value(on.bulkhead_full, "t", "narrow", "deferred") == 1


def test_dead_letters_locks_and_transitions(on: counters.Counters) -> None:
    counters.count("t", "task-dead-lettered", {"reason": "non_retryable", "letter_id": 1, "attempts": 1})
    counters.count("t", "task-lock-skipped", {"lock": "l", "retry_after": 1.0})
    counters.count("t", "task-lock-lost", {"lock": "l"})
    counters.count("t", "reliable-circuit-changed", {"breaker": "b", "new_state": "open", "reason": "failure_rate"})
    assert value(on.dead_lettered, "t", "non_retryable") == 1
    assert value(on.lock_skipped, "t") == 1
    assert value(on.lock_lost, "t") == 1
    assert value(on.transitions, "b", "open", "failure_rate") == 1


def test_a_counting_error_never_reaches_the_task(on: counters.Counters) -> None:
    counters.count("t", "task-deferred", {"reason": "locked", "delay_ms": "not a number"})
