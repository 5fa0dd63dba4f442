"""Singleton tasks in real prefork workers: exclusion, defer/skip/fail, release on retry."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from celery_reliable import LockNotAcquired
from celery_reliable.runtime import runtime
from tests.harness import RedisServer, wait_until
from tests.worker_app import app, exclusive, locked_retry, pg_exclusive, redlock_exclusive, report_fail, report_skip


def sections(ledger, tag: str) -> list[dict[str, float]]:
    return [json.loads(x) for x in ledger.lrange(f"sections:{tag}", 0, -1)]


def assert_no_overlap(rows: list[dict[str, float]]) -> None:
    rows = sorted(rows, key=lambda r: r["start"])
    for before, after in itertools.pairwise(rows):
        assert after["start"] >= before["end"], f"two bodies at once: {before} and {after}"
        assert after["token"] > before["token"], f"fencing tokens went backwards: {before} then {after}"


def test_twenty_submissions_on_two_workers_never_overlap(workers, ledger) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    results = [exclusive.delay(i, 0.15) for i in range(20)]
    for r in results:
        assert r.get(timeout=120)["lock"] == "tests.worker_app.exclusive"
    rows = sections(ledger, "exclusive")
    assert len(rows) == 20
    assert_no_overlap(rows)
    assert len({r["pid"] for r in rows}) >= 2  # the work really was spread over processes
    assert runtime(app).redis.exists(f"reliable:lock:{{{exclusive.name}}}") == 0  # released at the end


def test_skip_finishes_without_running_and_fail_raises(workers, ledger) -> None:
    w = workers("w1", {}, concurrency=3)
    holder = report_skip.delay("2026-11-23", 2.0)
    wait_until(lambda: ledger.llen("enter:report:2026-11-23") == 1, 20, what="the holder to start")
    skipped = report_skip.delay("2026-11-23", 0.1)
    other_day = report_skip.delay("2026-11-24", 0.1)
    failed = report_fail.delay("2026-11-23", 0.1)
    assert skipped.get(timeout=20) is None
    assert other_day.get(timeout=20)["lock"] == "report:2026-11-24"  # another name is not blocked
    with pytest.raises(LockNotAcquired, match="report:2026-11-23") as info:
        failed.get(timeout=20)
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 2.5
    assert holder.get(timeout=20)["lock"] == "report:2026-11-23"
    assert len(sections(ledger, "report:2026-11-23")) == 1
    assert "task-lock-skipped" in w.log()


def test_lock_is_released_while_a_retry_waits(workers, ledger) -> None:
    workers("w1", {}, concurrency=2)
    key = f"reliable:lock:{{acct:{'a-1'}}}"
    r = locked_retry.delay("a-1")
    wait_until(lambda: ledger.llen("attempts:a-1") == 1, 20, what="the first attempt")
    client = runtime(app).redis
    wait_until(lambda: client.exists(key) == 0, 5, what="the lock to be released by the retry")
    assert r.get(timeout=30) == "done"
    attempts = [a.decode().split(":") for a in ledger.lrange("attempts:a-1", 0, -1)]
    assert [a[0] for a in attempts] == ["0", "1"]
    assert int(attempts[1][1]) > int(attempts[0][1])  # a new hold, a newer token
    assert client.exists(key) == 0


def test_eager_call_of_a_busy_singleton_raises(workers, ledger) -> None:
    workers("w1", {}, concurrency=1)
    holder = exclusive.delay(0, 2.0)
    wait_until(lambda: ledger.llen("enter:exclusive") == 1, 20, what="the holder to start")
    with pytest.raises(LockNotAcquired):
        exclusive.apply(args=(1, 0.0), throw=True)
    holder.get(timeout=20)
    start = time.time()
    assert exclusive.apply(args=(2, 0.0), throw=True).get()["token"] > 0
    assert time.time() - start < 5


def test_postgres_advisory_backend_excludes_across_workers(workers, ledger) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    results = [pg_exclusive.delay(i, 0.2) for i in range(6)]
    for r in results:
        assert r.get(timeout=60)["lock"] == pg_exclusive.name
    rows = sections(ledger, "pg_exclusive")
    assert len(rows) == 6
    assert_no_overlap(rows)


def test_redlock_backend_excludes_across_workers_with_a_node_down(workers, ledger, tmp_path) -> None:
    nodes = [RedisServer(tmp_path) for _ in range(3)]
    try:
        env = {"TEST_REDLOCK_URLS": json.dumps([n.url for n in nodes])}
        workers("w1", env, concurrency=2)
        workers("w2", env, concurrency=2)
        first = [redlock_exclusive.delay(i, 0.2) for i in range(4)]
        for r in first:
            assert r.get(timeout=60)["lock"] == redlock_exclusive.name
        nodes[0].stop()  # a minority down: the lock keeps working
        second = [redlock_exclusive.delay(i, 0.2) for i in range(4, 8)]
        for r in second:
            assert r.get(timeout=60)["lock"] == redlock_exclusive.name
        rows = sections(ledger, "redlock_exclusive")
        assert len(rows) == 8
        assert_no_overlap(rows)
    finally:
        for n in nodes:
            n.stop()
