"""The consumer inbox: a message delivered twice changes state once.

First the primitive on PostgreSQL (two transactions racing on one id), then ReliableTask's
``inbox`` option in real prefork workers: duplicates running at the same time, and
workers SIGKILLed before and after the commit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable import inbox
from celery_reliable.maintenance import CLEANUP_INBOX_TASK, beat_schedule, cleanup_inbox
from tests.conftest import effects
from tests.inbox_app import app, apply_event, apply_message


@pytest.fixture()
def fresh_inbox(engine: Engine) -> Iterator[Engine]:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM reliable_inbox"))
    yield engine


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the primitive


def test_record_once_then_duplicate(fresh_inbox: Engine) -> None:
    mid = uid("evt")
    with Session(fresh_inbox) as s, s.begin():
        assert inbox.record(s, "billing", mid) is True
    with Session(fresh_inbox) as s, s.begin():
        assert inbox.record(s, "billing", mid) is False
        assert inbox.record(s, "shipping", mid) is True  # each consumer has its own inbox
    with fresh_inbox.connect() as conn:
        assert inbox.seen(conn, "billing", mid) and inbox.seen(conn, "shipping", mid)


def test_rolled_back_record_is_forgotten(fresh_inbox: Engine) -> None:
    mid = uid("evt")
    with Session(fresh_inbox) as s:
        s.begin()
        assert inbox.record(s, "billing", mid)
        s.rollback()  # the consumer's effects failed: the id goes with them
    with Session(fresh_inbox) as s, s.begin():
        assert inbox.record(s, "billing", mid) is True


@pytest.mark.parametrize("first_commits", [True, False])
def test_a_concurrent_duplicate_waits_for_the_first_transaction(fresh_inbox: Engine, first_commits: bool) -> None:
    mid = uid("evt")
    recorded = threading.Event()
    second: dict[str, object] = {}

    def first() -> None:
        with Session(fresh_inbox) as s:
            s.begin()
            assert inbox.record(s, "billing", mid)
            recorded.set()
            time.sleep(0.6)
            s.commit() if first_commits else s.rollback()

    def duplicate() -> None:
        recorded.wait(5)
        started = time.monotonic()
        with Session(fresh_inbox) as s, s.begin():
            second["recorded"] = inbox.record(s, "billing", mid)
        second["waited"] = time.monotonic() - started

    threads = [threading.Thread(target=first), threading.Thread(target=duplicate)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert second["waited"] >= 0.4  # it really overlapped the first transaction
    assert second["recorded"] is (not first_commits)


def test_expired_ids_are_replaced_and_cleaned_up(fresh_inbox: Engine) -> None:
    old, live = uid("old"), uid("live")
    with Session(fresh_inbox) as s, s.begin():
        assert inbox.record(s, "billing", old, ttl=1)
        assert inbox.record(s, "billing", live)
    time.sleep(1.1)
    with Session(fresh_inbox) as s, s.begin():
        assert inbox.record(s, "billing", old, ttl=1) is True  # expired: processed again
    time.sleep(1.1)
    assert cleanup_inbox(app) == {"deleted": 1}
    with fresh_inbox.connect() as conn:
        assert not inbox.seen(conn, "billing", old) and inbox.seen(conn, "billing", live)
    assert CLEANUP_INBOX_TASK in app.tasks
    assert CLEANUP_INBOX_TASK in {e["task"] for e in beat_schedule(app).values()}


# --------------------------------------------------------------------------- the task option


def test_eager_duplicate_rolls_back_and_returns_none(clean: None, fresh_inbox: Engine) -> None:
    evt = uid("evt")
    assert apply_event.apply((evt, 5)).get() == f"applied:{evt}"
    assert apply_event.apply((evt, 5)).get() is None
    tid = uid("task")
    assert apply_message.apply((3,), task_id=tid).get() == f"applied:{tid}"
    assert apply_message.apply((3,), task_id=tid).get() is None
    assert effects(fresh_inbox) == {evt: 1, tid: 1}


def test_an_event_delivered_twice_at_once_changes_state_once(workers, ledger, fresh_inbox: Engine) -> None:
    workers("w1", concurrency=4, app="tests.inbox_app")
    events = [uid("evt") for _ in range(6)]
    results = [apply_event.delay(e, i, hold=0.4) for i, e in enumerate(events) for _ in range(2)]
    tids = [uid("msg") for _ in range(3)]
    results += [apply_message.apply_async((7,), {"hold": 0.4}, task_id=t) for t in tids for _ in range(2)]

    outcomes = [r.get(timeout=60) for r in results]

    # both deliveries of every message ran their body (the duplicates were real) ...
    assert ledger.llen("inbox-bodies") == 2 * (len(events) + len(tids))
    # ... and each message changed state once
    assert effects(fresh_inbox) == {m: 1 for m in events + tids}
    assert sorted(o for o in outcomes[: 2 * len(events)] if o is not None) == sorted(f"applied:{e}" for e in events)
    assert outcomes[: 2 * len(events)].count(None) == len(events)
    # the two deliveries of a task id share one result in the backend: whichever finished last
    assert all(
        o in (None, f"applied:{t}")
        for o, t in zip(outcomes[2 * len(events) :], [t for t in tids for _ in "ab"], strict=True)
    )


@pytest.mark.parametrize(
    ("task", "kill"),
    [(apply_event, "in_block"), (apply_event, "after_commit"), (apply_message, "after_commit")],
    ids=["event-killed-before-commit", "event-killed-after-commit", "task-id-killed-after-commit"],
)
def test_a_worker_sigkilled_mid_task_still_applies_each_message_once(
    workers, ledger, fresh_inbox: Engine, task, kill: str
) -> None:
    workers("w1", concurrency=2, app="tests.inbox_app")
    if task is apply_event:
        ids = [uid("evt") for _ in range(5)]
        results = [apply_event.delay(m, 1, kill=kill) for m in ids]
    else:
        ids = [uid("msg") for _ in range(5)]
        results = [apply_message.apply_async((1,), {"kill": kill}, task_id=m) for m in ids]

    outcomes = [r.get(timeout=90) for r in results]

    assert int(ledger.get("inbox-kills") or 0) == len(ids)  # the fault happened to every message
    assert ledger.llen("inbox-bodies") == 2 * len(ids)  # and each was delivered again
    assert effects(fresh_inbox) == {m: 1 for m in ids}
    if kill == "in_block":  # nothing was committed before the kill: the redelivery applies it
        assert outcomes == [f"applied:{m}" for m in ids]
    else:  # committed before the kill: the redelivery finds the inbox row and does nothing
        assert outcomes == [None] * len(ids)
