"""Retries parked with backoff, dead letters, poison messages and replay, in real workers."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from sqlalchemy import text
from sqlalchemy.engine import Engine

from celery_reliable import DeadLetterStore, PoisonMessage
from tests.harness import wait_until
from tests.worker_app import (
    ApiError,
    add,
    app,
    backoff_schedule,
    budgeted_call,
    dependency_down,
    fixed_later,
    kills_its_worker,
    unauthorized,
)


def attempts(ledger, tag: str) -> list[dict[str, float]]:
    return [json.loads(x) for x in ledger.lrange(f"attempts:{tag}", 0, -1)]


def letters(engine: Engine) -> list[tuple[str, str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_id, task_name, reason, attempts FROM reliable_dead_letters")).all()
    return [tuple(r) for r in rows]


def settle(results, timeout: float = 120) -> None:
    for r in results:
        with pytest.raises(Exception):  # noqa: B017 - every one of them fails in the end
            r.get(timeout=timeout, propagate=True)


def test_backoff_schedule_is_really_waited(workers, ledger, engine: Engine) -> None:
    workers("w1", {}, concurrency=2)
    r = backoff_schedule.delay("a")
    wait_until(lambda: r.state == "RETRY", 10, what="the task to show as RETRY while it waits")
    with pytest.raises(TimeoutError, match="still down"):
        r.get(timeout=30)
    rows = attempts(ledger, "schedule:a")
    assert [row["retries"] for row in rows] == [0, 1, 2, 3]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(rows)]
    for gap, delay in zip(gaps, [0.3, 0.6, 1.0], strict=True):  # no jitter: base 0.3 s x 2^n, capped at 1 s
        assert delay <= gap <= delay + 1.5, (gaps, delay)
    [(task_id, name, reason, n)] = letters(engine)
    assert (task_id, name, reason, n) == (r.id, backoff_schedule.name, "exhausted", 4)


@pytest.mark.parametrize(
    "count", [pytest.param(300, id="300"), pytest.param(1000, id="1000", marks=pytest.mark.soak)]
)
def test_retryable_failures_make_five_attempts_and_one_letter_each(workers, ledger, engine: Engine, count: int) -> None:
    workers("w1", {}, concurrency=2)
    workers("w2", {}, concurrency=2)
    results = [dependency_down.delay(i) for i in range(count)]
    settle(results)
    for i in range(count):
        assert [a["retries"] for a in attempts(ledger, f"down:{i}")] == [0, 1, 2, 3, 4], i
    stored = letters(engine)
    assert len(stored) == count  # none lost, none twice
    assert {t for t, *_ in stored} == {r.id for r in results}
    assert {(reason, n) for _, _, reason, n in stored} == {("exhausted", 5)}
    letter = DeadLetterStore(engine).list(limit=1)[0]
    assert [h["attempt"] for h in letter.history] == [1, 2, 3, 4, 5]
    assert letter.exception_type == "ConnectionError" and "dependency down" in (letter.exception_message or "")
    assert letter.args is not None and letter.queue == "reliable-tests"


def test_a_permanent_error_is_dead_lettered_after_one_attempt(workers, ledger, engine: Engine) -> None:
    w = workers("w1", {}, concurrency=1)
    r = unauthorized.delay(7)
    with pytest.raises(ApiError):
        r.get(timeout=30)
    assert len(attempts(ledger, "401:7")) == 1
    assert letters(engine) == [(r.id, unauthorized.name, "permanent", 1)]
    assert "task-dead-lettered" in w.log()


def test_a_task_that_kills_its_worker_is_capped_then_dead_lettered(workers, ledger, engine: Engine) -> None:
    settings = json.dumps({"reliable_max_deliveries": 3})
    workers("w1", {"TEST_EXTRA_SETTINGS": settings}, concurrency=2)
    r = kills_its_worker.delay(1)
    wait_until(lambda: letters(engine) != [], 90, what="the poison task to be dead-lettered")
    assert len(attempts(ledger, "poison:1")) == 3  # ran (and killed its process) exactly 3 times
    assert letters(engine) == [(r.id, kills_its_worker.name, "poison", 4)]
    with pytest.raises(PoisonMessage, match="delivered 4 times"):
        r.get(timeout=30)
    assert add.delay(2, 2).get(timeout=30) == 4  # the pool kept serving


def test_replay_of_a_fixed_task_runs_it_once(workers, ledger, engine: Engine) -> None:
    workers("w1", {}, concurrency=2)
    ledger.set("broken", 1)
    r = fixed_later.delay(5)
    with pytest.raises(ConnectionError):
        r.get(timeout=60)
    [(task_id, _, reason, _)] = letters(engine)
    assert (task_id, reason) == (r.id, "exhausted")
    ledger.delete("broken")
    store = DeadLetterStore(engine)
    letter_id = store.list(limit=1)[0].id
    assert letter_id is not None
    first = store.replay(app, id=letter_id)
    second = store.replay(app, id=letter_id)
    assert [x.status for x in first] == ["published"] and [x.status for x in second] == ["already_replayed"]
    replayed = app.AsyncResult(first[0].task_id)
    assert replayed.get(timeout=30) == "fixed 5"
    time.sleep(1.0)
    runs = attempts(ledger, "fixable:5")
    assert len(runs) == 5 + 1  # five failed attempts, then exactly one replayed run
    assert runs[-1]["retries"] == 0  # a fresh attempt count


def test_the_retry_budget_caps_retry_volume(workers, ledger, engine: Engine) -> None:
    workers("w1", {}, concurrency=2)
    calls = 60
    results = [budgeted_call.delay(i) for i in range(calls)]
    settle(results)
    total = ledger.llen("attempts:budgeted")
    retries = total - calls
    # ratio 0.2 of the calls, plus the floor of 1 retry/s over the 10 s window
    assert retries <= 0.2 * calls + 10 + 1, retries
    reasons = [reason for *_, reason, _ in letters(engine)]
    assert len(reasons) == calls
    assert reasons.count("budget") >= calls - (0.2 * calls + 11) // 1 - 1
    assert retries > 0  # the budget did allow some


def test_arguments_that_do_not_fit_are_dead_lettered(workers, engine: Engine) -> None:
    workers("w1", {}, concurrency=1)
    r = app.send_task(add.name, args=(1, 2, 3))  # bypasses the client-side checks
    with pytest.raises(TypeError):
        r.get(timeout=30)
    assert letters(engine) == [(r.id, add.name, "bad_arguments", 1)]
    assert add.delay(1, 1).get(timeout=30) == 2
    with pytest.raises(CeleryTimeout):
        app.AsyncResult("never-sent").get(timeout=0.1)
