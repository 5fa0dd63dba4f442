"""The pump sleeps until the next parked entry is due, is woken by short parks and by stop, and does not spin.

Each test runs on a private redis-server (deferred set in db 0, broker in db 1), so the
command counts of INFO commandstats are the pump's alone. Bounds are loose on purpose
(a busy 2-core machine): the pump's interval is 2 s where the old behaviour would show.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_reliable.deferred.pump import Pump
from celery_reliable.deferred.store import DeferredSet
from celery_reliable.runtime import Runtime
from tests.harness import RedisServer, wait_until

QUEUE = "timing"


@pytest.fixture()
def deferred(private_redis: RedisServer) -> DeferredSet:
    return Runtime(_app(private_redis)).deferred()


@pytest.fixture()
def broker(private_redis: RedisServer) -> redis.Redis:
    return redis.Redis(port=private_redis.port, db=1)


def _app(server: RedisServer) -> Celery:
    app = Celery("pump-timing", broker=f"redis://127.0.0.1:{server.port}/1", set_as_current=False)
    app.conf.reliable_redis_url = server.url
    return app


@pytest.fixture()
def pump(private_redis: RedisServer, deferred: DeferredSet) -> Iterator[Pump]:
    p = Pump(_app(private_redis), deferred, interval=2.0, batch=100, lease_ms=60_000)
    yield p
    p.stop()


def entry(deferred: DeferredSet, tag: str) -> str:
    sig = {"task": "timing.noop", "args": [tag], "kwargs": {}, "options": {"queue": QUEUE}}
    return deferred.entry(sig, "retry")


def published_within(broker: redis.Redis, count: int, timeout: float) -> float:
    start = time.monotonic()
    wait_until(lambda: broker.llen(QUEUE) >= count, timeout, interval=0.005, what=f"{count} published")
    return time.monotonic() - start


def commands(server: RedisServer) -> dict[str, int]:
    stats = redis.Redis(port=server.port).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_take_says_when_the_next_entry_is_due(deferred: DeferredSet) -> None:
    assert deferred.take(10, 60_000).next_due_ms is None  # nothing parked
    deferred.park(entry(deferred, "now"), 0)
    deferred.park(entry(deferred, "soon"), 300)
    first = deferred.take(10, 60_000)
    assert len(first) == 1 and first.next_due_ms is not None and 200 < first.next_due_ms <= 300
    deferred.park(entry(deferred, "also-now"), 0)
    deferred.park(entry(deferred, "now-too"), 0)
    capped = deferred.take(1, 60_000)
    assert len(capped) == 1 and capped.next_due_ms == 0  # more due at once


def test_an_entry_parked_before_the_pump_started_goes_out_when_due(
    deferred: DeferredSet, pump: Pump, broker: redis.Redis
) -> None:
    deferred.park(entry(deferred, "50ms"), 50)
    parked_at = time.monotonic()
    pump.start()  # its first step finds the entry not yet due: it sleeps ~50 ms, not 2 s
    published_within(broker, 1, 5)
    assert 0.04 <= time.monotonic() - parked_at < 0.5


@pytest.mark.parametrize("delay_ms", [50, 0])
def test_a_sleeping_pump_is_woken_by_a_short_park(
    deferred: DeferredSet, pump: Pump, broker: redis.Redis, delay_ms: int
) -> None:
    pump.start()
    time.sleep(0.3)  # the pump found nothing and sleeps its 2 s interval
    deferred.park(entry(deferred, f"{delay_ms}ms"), delay_ms)
    assert published_within(broker, 1, 5) < 0.5
    wait_until(lambda: pump.moved == 1, 5, what="the pump to count it")  # it counts after publishing


def test_a_long_park_does_not_wake_the_pump(deferred: DeferredSet, private_redis: RedisServer) -> None:
    deferred.park(entry(deferred, "hour"), 3_600_000)
    assert redis.Redis(port=private_redis.port).llen(deferred.wake_key) == 0
    deferred.park(entry(deferred, "short"), 10)
    assert redis.Redis(port=private_redis.port).llen(deferred.wake_key) == 1


def test_an_idle_pump_does_not_spin(private_redis: RedisServer, deferred: DeferredSet) -> None:
    deferred.park(entry(deferred, "hour"), 3_600_000)  # something parked, due much later
    idle = Pump(_app(private_redis), deferred, interval=0.5, batch=100, lease_ms=60_000)
    idle.start()
    time.sleep(0.3)
    redis.Redis(port=private_redis.port).config_resetstat()
    time.sleep(2.0)
    counts = commands(private_redis)
    idle.stop()
    steps = counts.get("evalsha", 0)  # commandstats also counts the commands scripts run
    assert 1 <= steps <= 8, counts  # about 2 s / 0.5 s steps, not a busy loop
    assert counts.get("blpop", 0) <= steps + 1, counts  # one sleep per step
    assert idle.next_due_ms is not None and idle.next_due_ms > 3_500_000


def test_stop_wakes_a_sleeping_pump(pump: Pump) -> None:
    pump.interval = 30.0
    pump.start()
    time.sleep(0.3)
    start = time.monotonic()
    pump.stop(timeout=10)
    assert pump._thread is not None and not pump._thread.is_alive()
    assert time.monotonic() - start < 2.0


def test_a_short_park_survives_redis_forgetting_its_scripts(deferred: DeferredSet, private_redis: RedisServer) -> None:
    redis.Redis(port=private_redis.port).script_flush()
    due = deferred.park(entry(deferred, "after-flush"), 10)
    assert due > 0 and deferred.sizes()["due"] == 1
    assert redis.Redis(port=private_redis.port).llen(deferred.wake_key) == 1  # signalled after the entry is in
