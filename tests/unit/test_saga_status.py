"""What ``saga status`` makes of a saga's row and log, and the sweep's beat entry (no database needed)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from celery import Celery

from celery_reliable.saga import SWEEP_TASK, Saga, Step
from celery_reliable.saga.status import _step_states
from celery_reliable.saga.store import SagaRow
from celery_reliable.saga.sweeper import beat_entry, register

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def _row(name: str, state: str, step: int, **extra: Any) -> SagaRow:
    values: dict[str, Any] = dict(
        saga_id="s-1",
        name=name,
        state=state,
        reason=None,
        step=step,
        steps=3,
        context={},
        fingerprint="f",
        error=None,
        failed_step=None,
        redrives=0,
        deadline_at=NOW,
        lease_until=NOW,
        created_at=NOW,
        updated_at=NOW,
        finished_at=None,
    )
    values.update(extra)
    return SagaRow(**values)


def _event(event: str, step: int | None = None, name: str | None = None, detail: str | None = None) -> dict[str, Any]:
    return {"at": NOW.isoformat(), "event": event, "step": step, "step_name": name, "detail": detail}


def one(ctx: dict[str, Any]) -> None:
    return None


def two(ctx: dict[str, Any]) -> None:
    return None


def three(ctx: dict[str, Any]) -> None:
    return None


def _saga() -> str:
    name = f"unit_status_{uuid.uuid4().hex[:8]}"
    Saga(
        name,
        steps=[Step(one, compensate=two), Step(two, compensate=one), three],
        app=Celery(name, set_as_current=False),
    )
    return name


def test_a_running_saga_shows_done_running_and_pending_steps() -> None:
    name = _saga()
    states = _step_states(_row(name, "running", 1), [_event("started"), _event("step_completed", 0, "one")])
    assert [(s["name"], s["state"]) for s in states] == [("one", "completed"), ("two", "running"), ("three", "pending")]


def test_a_compensating_saga_shows_the_failed_step_and_what_is_undone() -> None:
    name = _saga()
    log = [
        _event("started"),
        _event("step_completed", 0, "one"),
        _event("step_completed", 1, "two"),
        _event("step_failed", 2, "three", "RuntimeError: no"),
        _event("step_compensated", 1, "two"),
    ]
    states = _step_states(_row(name, "compensating", 0, reason="step_failed", failed_step=2), log)
    assert [s["state"] for s in states] == ["compensating", "compensated", "failed"]


def test_a_process_that_does_not_define_the_saga_takes_step_names_from_the_log() -> None:
    log = [_event("started", detail='{"steps":["a","b","c"],"timeout_s":7200.0}'), _event("timeout", 1, "b")]
    states = _step_states(_row("not_defined_here", "compensated", -1, reason="timeout"), log)
    assert [(s["name"], s["state"]) for s in states] == [("a", "pending"), ("b", "stopped"), ("c", "pending")]


def test_the_sweep_task_and_its_beat_entry() -> None:
    app = Celery("unit-saga-sweep", set_as_current=False)
    register(app)
    assert SWEEP_TASK in app.tasks
    assert app.tasks[SWEEP_TASK]() == {"timed_out": 0, "redriven": 0}  # no database: nothing to sweep
    assert beat_entry(app)["celery-reliable-sweep-sagas"]["schedule"] == 5.0
    app.conf.reliable_saga_sweep_interval = 2
    assert beat_entry(app)["celery-reliable-sweep-sagas"] == {
        "task": SWEEP_TASK,
        "schedule": 2.0,
        "options": {"expires": 5.0},
    }


def test_a_re_sent_step_gets_a_doubling_lease_up_to_an_hour() -> None:
    from celery_reliable.saga.driver import MAX_REDRIVE_LEASE_MS, MAX_REDRIVES, redrive_lease_ms

    leases = [redrive_lease_ms(30_000, n) for n in range(MAX_REDRIVES)]
    assert leases[:4] == [60_000, 120_000, 240_000, 480_000]
    assert max(leases) == MAX_REDRIVE_LEASE_MS == leases[-1]
    assert sum(leases) > 12 * 3600 * 1000  # a backlog cannot fail a healthy saga within hours
    assert redrive_lease_ms(2 * MAX_REDRIVE_LEASE_MS, 3) == 2 * MAX_REDRIVE_LEASE_MS  # never below the step's own
