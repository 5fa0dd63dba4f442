"""ReliableTask in a real worker: plain Celery behaviour, deduplication, parking."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from celery import chain, chord, group
from sqlalchemy.engine import Engine

from celery_reliable import IdempotencyKeyMismatch
from celery_reliable.runtime import runtime
from tests.conftest import effects
from tests.harness import wait_until
from tests.worker_app import add, app, charge, flaky, later, send_receipt, tsum


@pytest.fixture()
def worker(workers):
    return workers("w1", {}, concurrency=2)


def test_no_options_behaves_like_celery(worker, ledger) -> None:
    r = add.delay(2, 3)
    assert r.get(timeout=20) == 5 and r.state == "SUCCESS"
    assert chain(add.s(1, 2), add.s(3), add.s(4)).apply_async().get(timeout=20) == 10
    assert group(add.s(i, i) for i in range(5)).apply_async().get(timeout=20) == [0, 2, 4, 6, 8]
    assert chord([add.s(i, 1) for i in range(4)], tsum.s()).apply_async().get(timeout=20) == 10
    # signals fire as for any task (task_prerun feeds the deliveries ledger)
    assert ledger.llen("deliveries") >= 1 + 3 + 5 + 5
    # called directly, it is a plain function call
    assert add(4, 5) == 9


def test_duplicates_return_the_stored_result(worker, engine: Engine) -> None:
    first = charge.delay("o-1", 10).get(timeout=20)
    dups = [charge.delay("o-1", 10) for _ in range(5)]
    assert [d.get(timeout=20) for d in dups] == [first] * 5
    assert effects(engine) == {"o-1": 1}
    assert "task-deduplicated" in worker.log()


def test_same_key_other_arguments_fails_clearly(worker, engine: Engine) -> None:
    charge.delay("o-2", 10).get(timeout=20)
    r = charge.delay("o-2", 99)
    with pytest.raises(IdempotencyKeyMismatch, match="o-2"):
        r.get(timeout=20)
    assert effects(engine) == {"o-2": 1}


def test_long_countdown_is_parked_then_runs_with_same_id(worker, ledger) -> None:
    deferred = runtime(app).deferred()
    start = time.time()
    r = later.apply_async(("soon",), countdown=2)
    assert deferred.sizes()["due"] == 1  # parked, not an ETA message in the worker
    assert r.get(timeout=30) == "soon"
    ran_at = float(ledger.lrange("later", 0, -1)[-1].decode().split(":")[1])
    assert ran_at - start >= 1.9
    assert deferred.sizes() == {"due": 0, "inflight": 0, "broken": 0}


def test_short_countdown_is_left_to_celery(worker) -> None:
    deferred = runtime(app).deferred()
    r = later.apply_async(("quick",), countdown=0.5)
    assert deferred.sizes()["due"] == 0
    assert r.get(timeout=20) == "quick"


def test_celery_retry_with_countdown_is_parked_and_counts_retries(worker, ledger) -> None:
    deferred = runtime(app).deferred()
    r = flaky.delay("t1")
    wait_until(lambda: deferred.sizes()["due"] == 1, 20, what="the retry to be parked")
    assert r.get(timeout=30) == "t1:1"
    assert [int(x) for x in ledger.lrange("flaky:t1", 0, -1)] == [0, 1]
    # the failed first attempt did not spend the key: the retry ran the body
    assert flaky.delay("t1").get(timeout=20) == "t1:1"
    assert ledger.llen("flaky:t1") == 2


def test_publish_time_dedup_returns_the_original_async_result(worker, ledger) -> None:
    first = send_receipt.delay("r1")
    again = [send_receipt.delay("r1") for _ in range(4)]
    assert {r.id for r in again} == {first.id}
    assert first.get(timeout=20) == "sent:r1"
    assert send_receipt.delay("r1").id == first.id  # done: still the original
    assert ledger.lrange("receipts", 0, -1) == [b"r1"]
    other = send_receipt.delay("r2")
    assert other.id != first.id and other.get(timeout=20) == "sent:r2"


def test_decisions_are_sent_as_celery_events(worker) -> None:
    """What Flower and `celery events` see: task-deduplicated and task-deferred."""
    seen: list[dict] = []
    ready = threading.Event()

    def capture() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            with contextlib.suppress(socket.timeout, TimeoutError):
                recv.capture(limit=None, timeout=8, wakeup=False)

    t = threading.Thread(target=capture, daemon=True)
    t.start()
    ready.wait(5)
    time.sleep(0.5)
    charge.delay("ev-1", 1).get(timeout=20)
    charge.delay("ev-1", 1).get(timeout=20)
    held = [charge.delay("ev-2", 2, 1.0) for _ in range(2)]  # same key at once: one is deferred
    for r in held:
        r.get(timeout=20)
    wait_until(lambda: {"task-deduplicated", "task-deferred"} <= {e["type"] for e in seen}, 10, what="the events")
    dedup = next(e for e in seen if e["type"] == "task-deduplicated")
    assert dedup["key"].endswith("charge:ev-1") and dedup["original_task_id"]
    deferred = next(e for e in seen if e["type"] == "task-deferred")
    assert deferred["reason"] == "key-in-progress" and deferred["uuid"] in {r.id for r in held}


def test_solo_pool_deduplicates_and_parks_too(workers, engine: Engine) -> None:
    workers("solo", {}, pool="solo", concurrency=1)
    results = [charge.delay("solo-1", 3) for _ in range(3)]
    assert [r.get(timeout=20) for r in results] == [{"order_id": "solo-1", "charged": 3}] * 3
    assert effects(engine) == {"solo-1": 1}
    assert later.apply_async(("solo",), countdown=1.5).get(timeout=20) == "solo"
