"""Sending a saga's next task, and the sweep that drives sagas whose step was lost or timed out.

The saga log is the truth; messages are only how a step gets to a worker. Whoever moves a
saga (a finished step, a failed one, the sweep) commits the move first and sends the next
task after, so a crash in between loses nothing: the new step's lease runs out and
:func:`sweep_sagas` sends it again. A task sent twice applies once (its idempotency key
is the saga id and step index).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..runtime import runtime
from . import store
from .errors import SagaError, SagaNotFound
from .model import CANCELLED, COMPENSATING, FAILED, RUNNING, STEP_FAILED, TIMEOUT
from .saga import DO, UNDO, Saga, get_saga

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger("celery_reliable")

#: Sagas the sweep handles per transaction.
SWEEP_BATCH = 100

#: How often the sweep sends one step again before giving up on it: a step lost this many
#: times (its worker died on every attempt) fails, and a compensation lost this many times
#: leaves the saga ``failed``, rather than killing workers forever.
MAX_REDRIVES = 25
#: The longest lease a re-sent step gets (see :func:`redrive_lease_ms`): one hour.
MAX_REDRIVE_LEASE_MS = 3_600_000


def engine(app: Celery) -> Engine:
    """The engine of ``reliable_database_url`` (the saga log lives there).

    Raises:
        ConfigurationError: no database configured.
    """
    rt = runtime(app)
    if not rt.has_database:
        raise ConfigurationError("reliable_database_url", "sagas keep their log in the database; set it")
    return rt.engine()


def send(app: Celery, saga: Saga, saga_id: str, phase: str, index: int) -> bool:
    """Send the task of step ``index`` (``phase`` ``"do"``) or of its compensation.

    A failure to publish is logged, not raised: the step's lease runs out and the sweep
    sends it again.
    """
    name = saga.task_name(index, phase)
    try:
        app.tasks[name].apply_async(kwargs={"saga_id": saga_id, "index": index})
    except Exception as exc:
        logger.warning("saga %s[%s]: could not send %s (the sweep sends it again): %r", saga.name, saga_id, name, exc)
        return False
    return True


def send_current(app: Celery, saga: Saga, row: store.SagaRow) -> bool:
    """Send whatever the saga's row says comes next (nothing for a finished saga)."""
    if row.state == RUNNING:
        return send(app, saga, row.saga_id, DO, row.step)
    if row.state == COMPENSATING:
        return send(app, saga, row.saga_id, UNDO, row.step)
    return False


def stop(conn: Connection, saga: Saga, row: store.SagaRow, reason: str, error: str, failed_step: int | None) -> bool:
    """Move a running saga to compensating its completed steps (or straight to compensated)."""
    first = saga.compensable_below(row.step)
    lease_ms = saga.steps[first].lease_ms if first is not None else 0
    if not store.begin_compensation(conn, row.saga_id, row.step, first, reason, error, failed_step, lease_ms):
        return False
    name = saga.steps[row.step].name if 0 <= row.step < len(saga.steps) else None
    store.log(conn, row.saga_id, reason, row.step, name, error)
    return True


def _saga_for(row: store.SagaRow) -> Saga:
    saga = get_saga(row.name)
    if saga is None:
        raise SagaError(row.saga_id, f"saga {row.name!r} is not defined in this process (import its module)")
    return saga


def cancel(app: Celery, saga_id: str, reason: str = CANCELLED) -> bool:
    """Compensate a running saga now (see :meth:`Saga.cancel`)."""
    with engine(app).begin() as conn:
        row = store.get(conn, saga_id, lock=True)
        if row is None:
            raise SagaNotFound(saga_id)
        saga = _saga_for(row)
        if row.state != RUNNING or not stop(conn, saga, row, CANCELLED, reason, None):
            return False
        moved = store.get(conn, saga_id)
    assert moved is not None
    send_current(app, saga, moved)
    return True


def resume(app: Celery, saga_id: str) -> bool:
    """Try a failed compensation again (after an operator fixed its cause).

    Returns:
        ``True`` if the saga was ``failed`` and compensates again.

    Raises:
        SagaNotFound: no saga with this id.
    """
    with engine(app).begin() as conn:
        row = store.get(conn, saga_id, lock=True)
        if row is None:
            raise SagaNotFound(saga_id)
        saga = _saga_for(row)
        if row.state != FAILED or not store.resume(conn, saga_id, row.step, saga.steps[row.step].lease_ms):
            return False
        store.log(conn, saga_id, "resumed", row.step, saga.steps[row.step].name)
    send(app, saga, saga_id, UNDO, row.step)
    return True


def sweep_sagas(app: Celery, batch: int = SWEEP_BATCH) -> dict[str, int]:
    """Compensate sagas past their deadline, and send again the steps whose lease ran out.

    Safe to run from every worker and from beat at once: rows are claimed with
    ``FOR UPDATE SKIP LOCKED``. Sagas whose definition this process does not know are
    left for a process that does.

    Returns:
        ``{"timed_out": n, "redriven": m}``.
    """
    eng = engine(app)
    todo: list[tuple[Saga, store.SagaRow]] = []
    timed_out = 0
    with eng.begin() as conn:
        for row in store.expired(conn, batch):
            saga = get_saga(row.name)
            if saga is None:
                continue
            error = f"saga timed out after {saga.timeout_ms / 1000:g}s"
            if stop(conn, saga, row, TIMEOUT, error, None):
                timed_out += 1
                moved = store.get(conn, row.saga_id)
                if moved is not None:
                    todo.append((saga, moved))
    redriven = 0
    with eng.begin() as conn:
        for row in store.stale(conn, batch):
            saga = get_saga(row.name)
            if saga is None or not 0 <= row.step < len(saga.steps):
                continue
            step = saga.steps[row.step]
            if row.redrives >= MAX_REDRIVES:
                moved = _give_up(conn, saga, row)
                if moved is not None:
                    todo.append((saga, moved))
            elif store.redrive(conn, row.saga_id, row.state, row.step, redrive_lease_ms(step.lease_ms, row.redrives)):
                store.log(conn, row.saga_id, "redriven", row.step, step.name, {"state": row.state})
                todo.append((saga, row))
                redriven += 1
    for saga, row in todo:
        send_current(app, saga, row)
    if timed_out or redriven:
        logger.info("saga sweep: %d timed out, %d step(s) sent again", timed_out, redriven)
    return {"timed_out": timed_out, "redriven": redriven}


def redrive_lease_ms(lease_ms: int, redrives: int) -> int:
    """The lease a step gets when the sweep sends it again for the ``redrives + 1``-th time.

    It doubles with every re-send, up to :data:`MAX_REDRIVE_LEASE_MS` (or the step's own
    lease, if longer): a step that waits in a long queue backlog (its lease starts when it is
    sent, and nobody renews it before a worker starts it) gets fewer and fewer copies sent
    after it, and reaches :data:`MAX_REDRIVES` only after many hours, long past the default
    saga timeout, instead of failing a saga that never crashed.
    """
    return max(lease_ms, min(lease_ms * 2 ** min(redrives + 1, 20), MAX_REDRIVE_LEASE_MS))


def _give_up(conn: Connection, saga: Saga, row: store.SagaRow) -> store.SagaRow | None:
    """A step lost ``MAX_REDRIVES`` times fails (compensation begins); such a compensation fails the saga."""
    name = saga.steps[row.step].name
    error = f"step {name!r} was sent {row.redrives + 1} times and never finished (does it kill its worker?)"
    logger.error("saga %s[%s]: %s", saga.name, row.saga_id, error)
    if row.state == RUNNING:
        return store.get(conn, row.saga_id) if stop(conn, saga, row, STEP_FAILED, error, row.step) else None
    if store.compensation_failed(conn, row.saga_id, row.step, error):
        store.log(conn, row.saga_id, "compensation_failed", row.step, name, error)
    return None


def describe(row: store.SagaRow) -> dict[str, Any]:
    """A saga's row with its step names (when this process defines the saga)."""
    out = row.as_dict()
    saga = get_saga(row.name)
    out["step_name"] = saga.steps[row.step].name if saga is not None and 0 <= row.step < len(saga.steps) else None
    return out
