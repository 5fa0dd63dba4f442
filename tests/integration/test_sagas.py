"""Sagas on real workers, PostgreSQL and Redis: completion, compensation in reverse, timeout, CLI.

One prefork worker runs ``tests.saga_app`` for the whole module; every test starts its
own sagas (fresh ids), so the tests do not see each other's rows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from celery_reliable.saga import COMPENSATED, COMPLETED, RUNNING, SagaConflict, saga_status
from celery_reliable.saga.cli import saga as saga_cli
from tests import saga_app
from tests.harness import WorkerProcess, wait_until
from tests.saga_app import bodies, committed, quick_trip, trip, wait_state

STARTED: list[str] = []


@pytest.fixture(scope="module")
def db() -> Iterator[Engine]:
    with saga_app.database(STARTED) as eng:
        yield eng


@pytest.fixture(scope="module")
def worker(db: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with saga_app.running_worker("saga-int", tmp_path_factory.mktemp("sagas")) as w:
        yield w


def _start(saga: object, **payload: object) -> str:
    trip_id = uuid.uuid4().hex[:8]
    saga_id = saga.start(saga_app.app, {"trip": trip_id, **payload})  # type: ignore[attr-defined]
    STARTED.append(saga_id)
    return saga_id


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=saga_app.app))
    return result.exit_code, result.output


def test_every_step_runs_once_and_each_sees_the_results_before_it(worker: WorkerProcess, db: Engine) -> None:
    saga_id = _start(trip)
    done = wait_state(saga_id, (COMPLETED, COMPENSATED))

    assert done["state"] == COMPLETED
    tid = done["context"]["trip"]
    assert done["context"] == {
        "trip": tid,
        "hotel_booking": f"H-{tid}",
        "charge": f"C-H-{tid}",
        "tickets": [f"C-H-{tid}", "T-1"],
    }
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]
    assert bodies(saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]
    assert [s["state"] for s in done["step_states"]] == ["completed"] * 3
    assert [e["event"] for e in done["log"]] == [
        "started",
        "step_completed",
        "step_completed",
        "step_completed",
        "completed",
    ]


def test_a_failed_third_step_compensates_the_second_then_the_first(worker: WorkerProcess, db: Engine) -> None:
    saga_id = _start(trip, fail_at="issue_tickets")
    done = wait_state(saga_id, (COMPLETED, COMPENSATED, "failed"))

    assert done["state"] == COMPENSATED
    assert done["reason"] == "step_failed"
    assert done["failed_step"] == 2
    assert "RuntimeError: issue_tickets refused" in done["error"]
    # the failed step wrote nothing; the two completed steps were undone in reverse, once each
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "undo:charge_card", "undo:reserve_hotel"]
    assert bodies(saga_id) == [
        "reserve_hotel",
        "charge_card",
        "issue_tickets",
        "undo:charge_card",
        "undo:reserve_hotel",
    ]
    assert [s["state"] for s in done["step_states"]] == ["compensated", "compensated", "failed"]


def test_the_saga_wide_timeout_compensates_and_rolls_back_the_step_it_cut_off(
    worker: WorkerProcess, db: Engine
) -> None:
    """quick_trip times out after 2 s while its second step still runs (3.5 s)."""
    saga_id = _start(quick_trip, sleep={"charge_card": 3.5})
    done = wait_state(saga_id, (COMPLETED, COMPENSATED, "failed"))

    assert done["state"] == COMPENSATED
    assert done["reason"] == "timeout"
    assert done["error"] == "saga timed out after 2s"
    # the step that was running when the deadline passed finishes later; its commit is refused
    wait_until(
        lambda: "step_rolled_back" in [e["event"] for e in saga_status(saga_app.app, saga_id)["log"]],
        15,
        what="the cut-off step to roll back",
    )
    assert committed(db, saga_id) == ["reserve_hotel", "undo:reserve_hotel"]
    assert bodies(saga_id) == ["reserve_hotel", "charge_card", "undo:reserve_hotel"]
    assert [s["state"] for s in saga_status(saga_app.app, saga_id)["step_states"]] == [
        "compensated",
        "stopped",
        "pending",
    ]


def test_cli_lists_and_shows_running_completed_and_compensated_sagas(worker: WorkerProcess, db: Engine) -> None:
    ok = _start(trip)
    failed = _start(trip, fail_at="charge_card")
    slow = _start(trip, sleep={"reserve_hotel": 4})
    wait_state(ok, (COMPLETED,))
    wait_state(failed, (COMPENSATED,))
    wait_until(lambda: "reserve_hotel" in bodies(slow), 10, what="the slow saga's first step to start")

    code, out = _cli("ls", "--name", "trip", "--limit", "500", "--json")
    assert code == 0, out
    states = {row["saga_id"]: row["state"] for row in json.loads(out)}
    assert (states[ok], states[failed], states[slow]) == (COMPLETED, COMPENSATED, RUNNING)

    code, out = _cli("status", slow, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["state"] == RUNNING and shown["step_name"] == "reserve_hotel"
    assert [s["state"] for s in shown["step_states"]] == ["running", "pending", "pending"]

    code, out = _cli("status", failed)
    assert code == 0, out
    assert f"saga {failed} (trip): compensated" in out
    assert "reason:   step_failed (RuntimeError: charge_card refused)" in out
    assert "1. reserve_hotel" in out and "compensated" in out and "2. charge_card" in out

    code, out = _cli("ls")
    assert code == 0 and ok in out and "completed" in out

    code, out = _cli("status", "--json")
    assert code == 0
    counts = json.loads(out)["trip"]
    assert counts[COMPLETED] >= 1 and counts[COMPENSATED] >= 1 and counts[RUNNING] >= 1

    code, out = _cli("status", "no-such-saga")
    assert code == 1
    assert "no saga with id 'no-such-saga'" in out
    wait_state(slow, (COMPLETED,))


def test_starting_the_same_saga_id_twice_runs_it_once(worker: WorkerProcess, db: Engine) -> None:
    saga_id = f"order-{uuid.uuid4().hex[:8]}"
    STARTED.append(saga_id)
    assert trip.start(saga_app.app, {"trip": saga_id}, saga_id=saga_id) == saga_id
    assert trip.start(saga_app.app, {"trip": saga_id}, saga_id=saga_id) == saga_id
    with pytest.raises(SagaConflict, match="another payload"):
        trip.start(saga_app.app, {"trip": "other"}, saga_id=saga_id)
    wait_state(saga_id, (COMPLETED,))
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]


def test_a_saga_started_in_a_rolled_back_transaction_never_runs(worker: WorkerProcess, db: Engine) -> None:
    from sqlalchemy.orm import Session

    kept, dropped = f"kept-{uuid.uuid4().hex[:8]}", f"dropped-{uuid.uuid4().hex[:8]}"
    STARTED.extend([kept, dropped])
    with Session(db) as session, session.begin():
        trip.start(saga_app.app, {"trip": kept}, saga_id=kept, session=session)
    with Session(db) as session:
        session.begin()
        trip.start(saga_app.app, {"trip": dropped}, saga_id=dropped, session=session)
        session.rollback()
    wait_state(kept, (COMPLETED,))
    code, out = _cli("status", dropped)
    assert code == 1 and "no saga with id" in out
    assert bodies(dropped) == []


def test_a_step_result_json_cannot_hold_fails_the_step_and_compensates(worker: WorkerProcess, db: Engine) -> None:
    saga_id = _start(saga_app.odd_trip)
    done = wait_state(saga_id, (COMPLETED, COMPENSATED, "failed"))

    assert done["state"] == COMPENSATED and done["failed_step"] == 1
    assert done["error"].startswith("SerializationError: ")
    assert "context after step 'book_room_with_a_set'" in done["error"]
    assert committed(db, saga_id) == ["reserve_hotel", "undo:reserve_hotel"]


def test_duplicate_deliveries_of_a_step_run_its_body_once(worker: WorkerProcess, db: Engine) -> None:
    """Three extra copies of the running second step (a broker redelivering it) change nothing."""
    saga_id = _start(trip, sleep={"charge_card": 1.5})
    wait_until(lambda: "charge_card" in bodies(saga_id), 10, what="the second step to start")
    step = saga_app.app.tasks[trip.task_name(1)]
    for _ in range(3):
        step.apply_async(kwargs={"saga_id": saga_id, "index": 1})
    wait_state(saga_id, (COMPLETED,))
    first = saga_app.app.tasks[trip.task_name(0)]
    first.apply_async(kwargs={"saga_id": saga_id, "index": 0})  # a late copy of a step long done
    wait_until(lambda: not saga_app.ledger().llen(f"{saga_app.PREFIX}:broker:{saga_app.QUEUE}"), 10, what="queue empty")
    time.sleep(1.5)  # parked copies come back within busy_delay (0.3 s) and run (or replay) by now

    assert bodies(saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]
