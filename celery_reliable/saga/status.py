"""Reading the saga log: one saga with its steps and events, lists, and counts per state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..jsoncodec import loads
from . import store
from .driver import describe, engine
from .errors import SagaNotFound
from .model import COMPENSATING, FAILED, RUNNING, STATES
from .saga import get_saga

if TYPE_CHECKING:
    from celery import Celery


def _step_states(row: store.SagaRow, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step's state from the log: pending, running, completed, failed, stopped (by a timeout or
    cancel), compensating, compensated or compensation_failed."""
    saga = get_saga(row.name)
    names: list[str | None] = [s.name for s in saga.steps] if saga is not None else [None] * row.steps
    states = ["pending"] * row.steps
    for event in events:
        if event["event"] == "started" and saga is None:  # a process that does not import the saga
            listed = loads(event["detail"] or "{}").get("steps") or []
            names = [*listed, *names[len(listed) :]][: row.steps]
        i = event["step"]
        if i is None or not 0 <= i < row.steps:
            continue
        if event["step_name"] and names[i] is None:
            names[i] = event["step_name"]
        kind = event["event"]
        if kind == "step_completed":
            states[i] = "completed"
        elif kind == "step_compensated":
            states[i] = "compensated"
        elif kind == "step_failed":
            states[i] = "failed"
        elif kind in ("timeout", "cancelled"):
            states[i] = "stopped"
        elif kind == "compensation_failed":
            states[i] = "compensation_failed"
    if row.state == RUNNING and 0 <= row.step < row.steps:
        states[row.step] = "running"
    elif row.state == COMPENSATING and 0 <= row.step < row.steps:
        states[row.step] = "compensating"
    elif row.state == FAILED and 0 <= row.step < row.steps:
        states[row.step] = "compensation_failed"
    return [{"index": i, "name": names[i], "state": states[i]} for i in range(row.steps)]


def saga_status(app: Celery, saga_id: str) -> dict[str, Any]:
    """One saga: its row, each step's state and its log.

    Raises:
        SagaNotFound: no saga with this id.
    """
    with engine(app).connect() as conn:
        row = store.get(conn, saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        events = store.history(conn, saga_id)
    out = describe(row)
    out["step_states"] = _step_states(row, events)
    out["log"] = events
    return out


def list_sagas(app: Celery, state: str | None = None, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Sagas, newest first, optionally of one state or name."""
    with engine(app).connect() as conn:
        return [describe(row) for row in store.listing(conn, state, name, limit)]


def saga_counts(app: Celery) -> dict[str, dict[str, int]]:
    """``{saga name: {state: count}}`` for every state, zeros included."""
    with engine(app).connect() as conn:
        found = store.counts(conn)
    return {name: {s: by_state.get(s, 0) for s in STATES} for name, by_state in sorted(found.items())}
