"""Reads and conditional writes of the saga log, each inside the caller's transaction.

Every change is an ``UPDATE ... WHERE state = :expected AND step = :expected`` on the
saga's row, so of two workers racing for one transition (a step finishing while the
sweep times the saga out, a redelivered step) exactly one wins; the row lock orders
them. Times come from the database's clock, the one clock every worker shares: leases and
deadlines are written from ``clock_timestamp()`` (the moment of the write), comparisons use
``now()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Row

from ..jsoncodec import dumps, loads
from .model import ACTIVE, COMPENSATED, COMPENSATING, COMPLETED, FAILED, RUNNING, saga_log, sagas


@dataclass(frozen=True)
class SagaRow:
    """One saga as the log holds it.

    Attributes:
        expired: whether its deadline had passed when read (database clock).
    """

    saga_id: str
    name: str
    state: str
    reason: str | None
    step: int
    steps: int
    context: dict[str, Any]
    fingerprint: str
    error: str | None
    failed_step: int | None
    redrives: int
    deadline_at: datetime
    lease_until: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    expired: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _row(row: Row[Any]) -> SagaRow:
    values = dict(row._mapping)
    values["context"] = loads(values["context"])
    return SagaRow(**values)


def _columns() -> list[Any]:
    return [*sagas.c, (sagas.c.deadline_at <= func.now()).label("expired")]


def _lease(ms: int) -> Any:
    # clock_timestamp(), not now(): now() is when the transaction began, and a step that
    # held its transaction longer than a lease would hand the next step a lease already over.
    return func.clock_timestamp() + timedelta(milliseconds=ms)


def log(
    conn: Connection, saga_id: str, event: str, step: int | None = None, name: str | None = None, detail: Any = None
) -> None:
    """Append one event to the saga's log."""
    text = None if detail is None else (detail if isinstance(detail, str) else dumps(detail, where="log detail"))
    conn.execute(
        insert(saga_log).values(saga_id=saga_id, event=event, step=step, step_name=name, detail=text, at=func.now())
    )


def insert_saga(
    conn: Connection,
    saga_id: str,
    name: str,
    steps: int,
    context: str,
    fingerprint: str,
    timeout_ms: int,
    lease_ms: int,
) -> bool:
    """Insert a new running saga at step 0; ``False`` if the id exists already."""
    now = func.clock_timestamp()  # not the caller's transaction start: start(session=) may come late in it
    stmt = (
        postgresql.insert(sagas)
        .values(
            saga_id=saga_id,
            name=name,
            state=RUNNING,
            step=0,
            steps=steps,
            context=context,
            fingerprint=fingerprint,
            redrives=0,
            deadline_at=now + timedelta(milliseconds=timeout_ms),
            lease_until=_lease(lease_ms),
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[sagas.c.saga_id])
        .returning(sagas.c.saga_id)
    )
    return conn.execute(stmt).first() is not None


def get(conn: Connection, saga_id: str, lock: bool = False) -> SagaRow | None:
    """The saga ``saga_id``, or ``None``; ``lock`` takes its row lock until the transaction ends."""
    stmt = select(*_columns()).where(sagas.c.saga_id == saga_id)
    if lock:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else _row(row)


def _move(conn: Connection, saga_id: str, at_state: str, at_step: int, **values: Any) -> bool:
    """Change the saga's row if it is still ``at_state`` at step ``at_step``."""
    stmt = (
        update(sagas)
        .where(sagas.c.saga_id == saga_id, sagas.c.state == at_state, sagas.c.step == at_step)
        .values(updated_at=func.now(), **values)
    )
    return bool(conn.execute(stmt).rowcount)


def advance(conn: Connection, saga_id: str, index: int, context: str, next_step: int | None, lease_ms: int) -> bool:
    """Step ``index`` is done: store the merged context and move on (or complete). ``False``: moved on already."""
    if next_step is None:
        values: dict[str, Any] = {"state": COMPLETED, "step": -1, "finished_at": func.now()}
    else:
        values = {"step": next_step, "lease_until": _lease(lease_ms)}
    return _move(conn, saga_id, RUNNING, index, context=context, redrives=0, **values)


def begin_compensation(
    conn: Connection,
    saga_id: str,
    step: int,
    first: int | None,
    reason: str,
    error: str,
    failed_step: int | None,
    lease_ms: int,
) -> bool:
    """Stop a running saga at ``step`` and start undoing from ``first`` (``None``: nothing to undo)."""
    values: dict[str, Any] = {"reason": reason, "error": error, "failed_step": failed_step, "redrives": 0}
    if first is None:
        values.update(state=COMPENSATED, step=-1, finished_at=func.now())
    else:
        values.update(state=COMPENSATING, step=first, lease_until=_lease(lease_ms))
    return _move(conn, saga_id, RUNNING, step, **values)


def compensated(conn: Connection, saga_id: str, index: int, next_step: int | None, lease_ms: int) -> bool:
    """Compensation ``index`` is done: go on with ``next_step`` or finish as compensated."""
    if next_step is None:
        values: dict[str, Any] = {"state": COMPENSATED, "step": -1, "finished_at": func.now()}
    else:
        values = {"step": next_step, "lease_until": _lease(lease_ms)}
    return _move(conn, saga_id, COMPENSATING, index, redrives=0, **values)


def compensation_failed(conn: Connection, saga_id: str, index: int, error: str) -> bool:
    """Compensation ``index`` failed for good: the saga waits for an operator."""
    return _move(conn, saga_id, COMPENSATING, index, state=FAILED, error=error)


def resume(conn: Connection, saga_id: str, step: int, lease_ms: int) -> bool:
    """Put a failed saga back to compensating its step ``step``."""
    return _move(conn, saga_id, FAILED, step, state=COMPENSATING, lease_until=_lease(lease_ms), redrives=0)


def renew(conn: Connection, saga_id: str, state: str, step: int, lease_ms: int) -> bool:
    """Extend the lease of the step being run; ``False`` if the saga moved on."""
    return _move(conn, saga_id, state, step, lease_until=_lease(lease_ms))


def redrive(conn: Connection, saga_id: str, state: str, step: int, lease_ms: int) -> bool:
    """Count one more drive of the current step (``redrives`` counts per step) and give it a fresh lease."""
    return _move(conn, saga_id, state, step, lease_until=_lease(lease_ms), redrives=sagas.c.redrives + 1)


def expired(conn: Connection, batch: int) -> list[SagaRow]:
    """Running sagas past their deadline, locked (rows other transactions hold are skipped)."""
    stmt = (
        select(*_columns())
        .where(sagas.c.state == RUNNING, sagas.c.deadline_at <= func.now())
        .order_by(sagas.c.deadline_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    return [_row(r) for r in conn.execute(stmt)]


def stale(conn: Connection, batch: int) -> list[SagaRow]:
    """Active sagas whose current step's lease ran out, locked (rows others hold are skipped)."""
    stmt = (
        select(*_columns())
        .where(sagas.c.state.in_(ACTIVE), sagas.c.lease_until <= func.now())
        .order_by(sagas.c.lease_until)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    return [_row(r) for r in conn.execute(stmt)]


def listing(conn: Connection, state: str | None = None, name: str | None = None, limit: int = 50) -> list[SagaRow]:
    """Sagas, newest first."""
    stmt = select(*_columns()).order_by(sagas.c.created_at.desc(), sagas.c.saga_id).limit(limit)
    if state is not None:
        stmt = stmt.where(sagas.c.state == state)
    if name is not None:
        stmt = stmt.where(sagas.c.name == name)
    return [_row(r) for r in conn.execute(stmt)]


def counts(conn: Connection) -> dict[str, dict[str, int]]:
    """``{saga name: {state: count}}``."""
    found: dict[str, dict[str, int]] = {}
    for name, state, n in conn.execute(
        select(sagas.c.name, sagas.c.state, func.count()).group_by(sagas.c.name, sagas.c.state)
    ):
        found.setdefault(name, {})[state] = int(n)
    return found


def history(conn: Connection, saga_id: str) -> list[dict[str, Any]]:
    """The saga's log, oldest first."""
    rows = conn.execute(select(saga_log).where(saga_log.c.saga_id == saga_id).order_by(saga_log.c.id))
    out = []
    for r in rows:
        out.append(
            {"at": r.at.isoformat(), "event": r.event, "step": r.step, "step_name": r.step_name, "detail": r.detail}
        )
    return out
