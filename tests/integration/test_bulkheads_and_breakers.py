"""Bulkheads and the shared circuit breaker on real prefork workers: the cap holds across
workers, a full bulkhead parks or rejects, a full queue refuses at the door, and an open
breaker keeps attempts away from a dead dependency without spending retries."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from celery_reliable import BulkheadFull, CircuitOpen, QueueFull
from tests.harness import wait_until
from tests.worker_app import (
    app,
    call_dependency,
    critical_work,
    exchange_rate,
    narrow,
    narrow_or_reject,
    optional_work,
    retrying_dependency,
    shed,
    three,
)


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
    rejected = {task_id for task_id, _ in letters()}
    assert ran | rejected == {r.id for r in results} and not ran & rejected  # each ran or was rejected
    for r in results:  # a rejected task fails (callers do not wait for ever), the others succeed
        r.get(timeout=20, propagate=False)
        assert r.state == ("FAILURE" if r.id in rejected else "SUCCESS"), (r.id, r.state)
        if r.id in rejected:
            assert isinstance(r.result, BulkheadFull) and r.result.name == "narrow"


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


def test_self_retry_inside_an_open_breaker_stays_away_from_the_dependency(workers, ledger: redis.Redis) -> None:
    workers("w1", {}, concurrency=2)
    ledger.set("dep:down", "1")
    results = [retrying_dependency.delay(i) for i in range(10)]
    time.sleep(5)  # self.retry every 50 ms: 100 calls per task without the breaker
    calls_while_down = ledger.llen("dep:retry-calls")
    ledger.delete("dep:down")
    assert sorted(r.get(timeout=60) for r in results) == list(range(10))
    # The body's Retry carries the ConnectionError: 3 of them open the breaker; then probes.
    assert 3 <= calls_while_down <= 3 + 4 * 2 + 4, calls_while_down


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
    assert exchange_rate.delay(currency="EUR").get(timeout=10) == good  # however the arguments are passed
    with pytest.raises(CircuitOpen):  # no good result of another call to fall back on
        exchange_rate.delay("USD").get(timeout=10)
    ledger.delete("rates:down")


def most_in_flight(intervals: list[tuple[int, int]]) -> int:
    """The most intervals ``[start, end)`` that overlap at any instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_a_bulkhead_of_three_over_600_tasks_on_two_workers(workers, ledger: redis.Redis) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    started = time.monotonic()
    results = [three.delay(i, 0.02) for i in range(600)]
    assert sorted(r.get(timeout=180) for r in results) == list(range(600))  # none lost
    elapsed = time.monotonic() - started
    rows = [json.loads(x) for x in ledger.lrange("three", 0, -1)]
    assert len(rows) == 600 and {r["retries"] for r in rows} == {0}  # none twice, no retry spent
    in_flight = most_in_flight([(r["start_us"], r["end_us"]) for r in rows])
    assert in_flight == 3, f"{in_flight} bodies in flight at once (want 3: the cap, and reached)"
    print(f"600 tasks through a bulkhead of 3 on 4 processes: {elapsed:.1f} s")


def test_a_sigkilled_holders_slot_returns_within_its_lease(workers, ledger: redis.Redis) -> None:
    lease = 3.0
    w = workers("w1", {"TEST_BULKHEAD_LEASE": str(lease)}, concurrency=4)
    victims = [three.delay(i, 8.0) for i in range(3)]  # hold all three slots
    wait_until(lambda: ledger.llen("three:started") == 3, 40, what="three bodies holding the slots")
    waiting = three.delay(99, 0.0)  # sent only now, so it finds the bulkhead full and is parked
    victim = json.loads(ledger.lindex("three:started", 0))
    assert victim["pid"] in w.children()
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    # The killed body's slot comes back after its lease (it was renewed until the kill), not before;
    # the parked task and the killed one's redelivery are the ones waiting for it.
    wait_until(lambda: ledger.llen("three:started") >= 4, lease + 10, interval=0.05, what="a slot to come back")
    returned = time.monotonic() - killed_at
    assert lease * 0.5 <= returned <= lease + 1.0, returned
    assert waiting.get(timeout=30) == 99
    assert sorted(r.get(timeout=60) for r in victims) == [0, 1, 2]  # the killed one ran again
    print(f"slot back {returned:.2f} s after the SIGKILL (lease {lease} s)")


def test_a_flood_on_the_optional_tier_does_not_hold_up_critical_tasks(workers, ledger: redis.Redis) -> None:
    # Each tier has its own queue (as in workers/), consumed by the same workers; the
    # optional tier's bulkhead (1) parks its flood, so it holds no worker process.
    tiers = {"TEST_EXTRA_QUEUES": "reliable-tests-optional"}
    workers("w1", tiers, concurrency=2)
    workers("w2", tiers, concurrency=2)

    def now_us() -> int:
        seconds, micros = ledger.time()
        return int(seconds) * 1_000_000 + int(micros)

    quiet = [critical_work.delay(i, now_us()).get(timeout=10) for i in range(5)]
    normal = max(json.loads(x)["latency_us"] for x in ledger.lrange("critical", 0, -1))
    assert quiet == list(range(5))
    ledger.delete("critical")
    flood = [optional_work.apply_async((i, 0.2), queue="reliable-tests-optional") for i in range(200)]  # 40 s of work
    time.sleep(1)
    during = [critical_work.delay(i, now_us()) for i in range(20)]
    assert [r.get(timeout=20) for r in during] == list(range(20))
    latencies = sorted(json.loads(x)["latency_us"] for x in ledger.lrange("critical", 0, -1))
    assert ledger.llen("optional") < 100, "the flood was over before the critical tasks were measured"
    assert latencies[-1] < max(5 * normal, 1_000_000), (latencies[-1], normal)
    print(f"critical latency: normal {normal / 1000:.0f} ms, during the flood max {latencies[-1] / 1000:.0f} ms")
    for r in flood:
        r.revoke()
