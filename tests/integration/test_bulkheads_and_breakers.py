"""Bulkheads and the shared circuit breaker on real prefork workers: the cap holds across
workers, a full bulkhead parks or rejects, a full queue refuses at the door, and an open
breaker keeps attempts away from a dead dependency without spending retries."""

from __future__ import annotations

import json
import time

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from celery_reliable import QueueFull
from tests.harness import wait_until
from tests.worker_app import app, call_dependency, exchange_rate, narrow, narrow_or_reject, shed


def test_the_narrow_tier_never_runs_more_than_two_bodies_across_workers(workers, ledger: redis.Redis) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    results = [narrow.delay(i, 0.3) for i in range(16)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(16))  # none lost
    seen = [int(x) for x in ledger.lrange("narrow:seen", 0, -1)]
    assert len(seen) == 16 and max(seen) <= 2  # 4 worker processes, never more than 2 bodies
    assert max(seen) == 2, "the bulkhead was never full: the test did not test anything"
    rows = [json.loads(x) for x in ledger.lrange("narrow", 0, -1)]
    assert {r["retries"] for r in rows} == {0}  # waiting for a slot spent no retry
    deliveries = [d for d in ledger.lrange("deliveries", 0, -1) if d.decode().startswith(f"{narrow.name}:")]
    assert len(deliveries) > 16, "no task was ever parked for a full bulkhead"


def test_a_full_bulkhead_can_reject_to_the_dead_letter_store(workers, ledger: redis.Redis, engine: Engine) -> None:
    workers("w1", {}, concurrency=4)
    results = [narrow_or_reject.delay(i, 1.5) for i in range(4)]
    wait_until(lambda: ledger.llen("narrow-reject") == 2, 20, what="two bodies holding the narrow tier")

    def letters() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT task_id, reason FROM reliable_dead_letters")).all()]

    wait_until(lambda: len(letters()) == 2, 20, what="the two tasks that found it full to be dead-lettered")
    assert {reason for _, reason in letters()} == {"bulkhead_full"}
    ran = {json.loads(x)["task_id"] for x in ledger.lrange("narrow-reject", 0, -1)}
    assert ran | {task_id for task_id, _ in letters()} == {r.id for r in results}  # each ran or was rejected


def test_max_queue_depth_refuses_at_the_door() -> None:
    queue = "reliable-tests-shed"
    client = redis.Redis.from_url(app.conf.broker_url)
    client.delete(queue)
    try:
        for i in range(5):
            shed.apply_async((i,), queue=queue)
        with pytest.raises(QueueFull) as refused:
            shed.apply_async((5,), queue=queue)
        assert (refused.value.queue, refused.value.depth, refused.value.max_depth) == (queue, 5, 5)
        assert client.llen(queue) == 5  # nothing more was published
    finally:
        client.delete(queue)


def test_an_open_breaker_keeps_attempts_away_from_a_dead_dependency(
    workers, ledger: redis.Redis, engine: Engine
) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    ledger.set("dep:down", "1")
    results = [call_dependency.delay(i) for i in range(30)]
    time.sleep(6)  # the outage: each task would make 5 attempts (FAST policy) without the breaker
    calls_while_down = [json.loads(x) for x in ledger.lrange("dep:calls", 0, -1)]
    ledger.delete("dep:down")
    assert sorted(r.get(timeout=60) for r in results) == list(range(30))  # all succeed once it is back
    # 3 failures open it; then one probe per 1.5 s recovery: a handful of calls, not 150.
    assert 3 <= len(calls_while_down) <= 3 + 4 * 2 + 4, len(calls_while_down)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reliable_dead_letters")).scalar() == 0  # no retries exhausted
    ok = [json.loads(x) for x in ledger.lrange("dep:ok", 0, -1)]
    assert len(ok) == 30 and max(r["retries"] for r in ok) <= 4


def test_last_result_fallback_answers_while_open(workers, ledger: redis.Redis) -> None:
    workers("w1", {}, concurrency=2)
    good = exchange_rate.delay("EUR").get(timeout=10)
    ledger.set("rates:down", "1")
    failures = 0
    while True:  # the default rule: 50% failures over 10 calls (at least 10 calls) opens it
        try:
            answered = exchange_rate.delay("EUR").get(timeout=10)
            break
        except ConnectionError:
            failures += 1
            assert failures <= 10, "the breaker never opened"
    assert failures == 9  # 1 success and 9 failures: 90% of 10 calls
    assert answered == good  # the last good result, not an error, while the breaker is open
    assert exchange_rate.delay("EUR").get(timeout=10) == good
    ledger.delete("rates:down")
