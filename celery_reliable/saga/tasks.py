"""The tasks that run a saga's steps and compensations, and what they write to the saga log.

Each step ``i`` of saga ``s`` is a ReliableTask named ``saga.<s>.<step>`` (its compensation
``saga.<s>.<step>.compensate``) called with ``saga_id`` and ``index``, keyed
``saga:{saga_id}:{index}``. Its body checks that the saga is still at this step, runs
the user's callable on the context, and moves the saga on inside the task's
``self.transaction()``: the step's own database effects, its idempotency record and the
saga's progress commit together, once. The next task is sent after that commit.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from celery.exceptions import Ignore

from .. import _failpoints
from ..execution import current
from ..heartbeat import Lease, heartbeat
from ..jsoncodec import dumps
from ..runtime import runtime
from ..task import ReliableTask
from . import driver, store
from .errors import SagaDefinitionError, StepResultError
from .model import COMPENSATING, RUNNING, STEP_FAILED, TIMEOUT
from .saga import DO, UNDO, Saga, get_saga

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

logger = logging.getLogger("celery_reliable")

#: Longest error text kept in the saga log.
MAX_ERROR_CHARS = 2000


@dataclass
class _Outcome:
    """What the running body did: whether it ran (not a replay), and what to send after its commit."""

    ran: bool = False
    sends: list[tuple[str, int]] = field(default_factory=list)


_outcome: ContextVar[_Outcome | None] = ContextVar("celery_reliable_saga_outcome", default=None)


class _MovedOn(Exception):
    """The saga left this step while it ran: roll the step's transaction back."""


class SagaTask(ReliableTask):
    """Base class of the step and compensation tasks (made by :class:`~celery_reliable.saga.Saga`)."""

    #: The saga this task belongs to.
    saga_name: ClassVar[str] = ""
    #: ``"do"`` for the step, ``"compensate"`` for its compensation.
    saga_phase: ClassVar[str] = DO

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request_stack.top
        if req is None or req.called_directly or not req.id:
            return super().__call__(*args, **kwargs)
        outcome = _Outcome()
        token = _outcome.set(outcome)
        try:
            result = super().__call__(*args, **kwargs)
        finally:
            _outcome.reset(token)
        saga = saga_of(self)
        saga_id, index = _ids(args, kwargs)
        # Keyed by saga and step, not task id: a step sent again by the sweep must not crash again.
        _failpoints.hit("saga_before_send", f"{saga_id}:{self.saga_phase}:{index}", runtime(self.app).config.redis_url)
        if outcome.ran:
            for phase, nxt in outcome.sends:
                driver.send(self.app, saga, saga_id, phase, nxt)
        else:  # a redelivery answered from the idempotency record: send the successor if it is still due
            _send_successor(self.app, saga, saga_id, self.saga_phase, index)
        return result

    def transaction(self, commit_on_exit: bool = False) -> AbstractContextManager[Session]:
        """The step's transaction: its effects, its key and the saga's progress commit together.

        Raises:
            SagaDefinitionError: ``commit_on_exit=True`` (the commit must carry the saga's progress).
        """
        if commit_on_exit:
            raise SagaDefinitionError(
                self.saga_name,
                f"{self.name}: saga steps commit with the saga's progress; commit_on_exit is not allowed",
            )
        return super().transaction()

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """A step that failed for good starts compensation; a compensation that did marks the saga failed."""
        super().on_failure(exc, task_id, args, kwargs, einfo)
        try:
            saga_id, index = _ids(args, kwargs)
            record_failure(self.app, saga_of(self), self.saga_phase, saga_id, index, exc)
        except Exception:  # the sweep drives the step again after its lease; it fails again and lands here
            logger.exception("%s[%s]: could not record the failure in the saga log", self.name, task_id)


def saga_of(task: SagaTask) -> Saga:
    """The saga definition of ``task``."""
    saga = get_saga(task.saga_name)
    if saga is None:  # pragma: no cover - tasks are only made by a Saga
        raise SagaDefinitionError(task.saga_name, f"saga {task.saga_name!r} is not defined in this process")
    return saga


def _ids(args: Any, kwargs: Any) -> tuple[str, int]:
    kw = dict(kwargs or {})
    rest = list(args or ())
    saga_id = kw["saga_id"] if "saga_id" in kw else rest.pop(0)
    index = kw["index"] if "index" in kw else rest.pop(0)
    return str(saga_id), int(index)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def register_tasks(saga: Saga, app: Celery | None) -> None:
    """Declare the step and compensation tasks of ``saga`` on ``app`` (every app when ``None``)."""
    from celery import shared_task

    ttl = max(86400.0, 2 * saga.timeout_ms / 1000)
    for i, step in enumerate(saga.steps):
        phases: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [(DO, run_step, step.options)]
        if step.compensate is not None:
            phases.append((UNDO, run_compensation, step.compensate_options))
        for phase, body, options in phases:
            opts = {
                "base": SagaTask,
                "bind": True,
                "name": saga.task_name(i, phase),
                "idempotency_key": "saga:{saga_id}:{index}:" + phase,
                "idempotency_ttl": ttl,
                "saga_name": saga.name,
                "saga_phase": phase,
                "serializer": "json",
                **options,
            }
            fn = _body(body, f"{saga.name}.{step.name}.{phase}")
            if app is None:
                shared_task(fn, **opts)
            else:  # not lazy: a wrong option fails here, naming the step, not when the app finalizes
                app.task(fn, lazy=False, shared=False, **opts)


def _body(body: Callable[..., Any], qualname: str) -> Callable[..., Any]:
    def run(self: SagaTask, saga_id: str, index: int) -> Any:
        return body(self, saga_id, index)

    run.__qualname__ = run.__name__ = qualname.replace(".", "_").replace(":", "_").replace("-", "_")
    run.__doc__ = f"Saga task {qualname}."
    return run


@contextmanager
def _transaction(task: SagaTask) -> Iterator[Connection]:
    """The connection of the step's transaction: the user's open block, or a new one of the task's."""
    ex = current.get()
    if ex is not None and ex.task_id == task.request.id and ex.pending is not None:
        yield ex.pending.connection()  # committed with the task's result, after the body returns
        return
    with task.transaction() as session:
        yield session.connection()


def _renew(eng: Engine, saga_id: str, state: str, index: int, lease_ms: int) -> bool:
    with eng.begin() as conn:
        return store.renew(conn, saga_id, state, index, lease_ms)


def _call(
    task: SagaTask,
    fn: Callable[..., Any],
    bind: bool,
    context: dict[str, Any],
    saga_id: str,
    state: str,
    index: int,
    lease_ms: int,
) -> Any:
    """Run a user callable while a heartbeat renews the step's lease in the saga log."""
    renew = partial(_renew, driver.engine(task.app), saga_id, state, index, lease_ms)
    lease = heartbeat().add(Lease(f"saga {saga_id} step {index}", lease_ms, renew))
    try:
        return fn(task, context) if bind else fn(context)
    finally:
        heartbeat().remove(lease)


def _current(task: SagaTask, saga_id: str, state: str, index: int) -> store.SagaRow:
    """The saga's row, if it is at this step in this state; otherwise end the delivery (``Ignore``)."""
    with driver.engine(task.app).connect() as conn:
        row = store.get(conn, saga_id)
    if row is None:
        logger.error("%s[%s]: no saga %r in the saga log; nothing to do", task.name, task.request.id, saga_id)
        raise Ignore()
    if row.state != state or row.step != index:
        logger.info(
            "%s[%s]: saga %s is %s at step %d, not %s at step %d; this delivery is obsolete",
            task.name,
            task.request.id,
            saga_id,
            row.state,
            row.step,
            state,
            index,
        )
        raise Ignore()
    return row


def _moved_on(task: SagaTask, saga_id: str, index: int, name: str) -> None:
    """Log a step whose saga left it while it ran (its transaction was rolled back)."""
    logger.warning(
        "%s[%s]: saga %s moved on while the step ran; its effects were rolled back", task.name, task.request.id, saga_id
    )
    with driver.engine(task.app).begin() as conn:
        store.log(conn, saga_id, "step_rolled_back", index, name, "the saga moved on while the step ran")


def run_step(task: SagaTask, saga_id: str, index: int) -> dict[str, Any]:
    """The body of step ``index``: run the action, merge its result, move the saga on."""
    saga = saga_of(task)
    step = saga.steps[index]
    row = _current(task, saga_id, RUNNING, index)
    if row.expired:
        _time_out(task.app, saga, saga_id, index)
        raise Ignore()
    out = _call(task, step.action, step.bind, copy.deepcopy(row.context), saga_id, RUNNING, index, step.lease_ms)
    if out is None:
        out = {}
    if not isinstance(out, dict):
        raise StepResultError(saga_id, f"step {step.name!r} must return a dict or None, got {type(out).__name__}")
    for key in out:
        if not isinstance(key, str):
            raise StepResultError(saga_id, f"step {step.name!r} returned a non-str key {key!r}")
    text = dumps({**row.context, **out}, where=f"context after step {step.name!r}")
    nxt = index + 1 if index + 1 < len(saga.steps) else None
    lease_ms = 0 if nxt is None else saga.steps[nxt].lease_ms
    _commit_move(task, saga_id, index, step.name, "step_completed", "completed", nxt,
                 lambda conn: store.advance(conn, saga_id, index, text, nxt, lease_ms))  # fmt: skip
    _finished(DO, nxt)
    return out


def run_compensation(task: SagaTask, saga_id: str, index: int) -> None:
    """The body of compensation ``index``: undo the step, move on to the one before it."""
    saga = saga_of(task)
    step = saga.steps[index]
    assert step.compensate is not None
    row = _current(task, saga_id, COMPENSATING, index)
    _call(task, step.compensate, step.bind, copy.deepcopy(row.context), saga_id, COMPENSATING, index, step.lease_ms)
    nxt = saga.compensable_below(index)
    lease_ms = 0 if nxt is None else saga.steps[nxt].lease_ms
    _commit_move(task, saga_id, index, step.name, "step_compensated", "compensated", nxt,
                 lambda conn: store.compensated(conn, saga_id, index, nxt, lease_ms))  # fmt: skip
    _finished(UNDO, nxt)


def _commit_move(
    task: SagaTask,
    saga_id: str,
    index: int,
    name: str,
    event: str,
    last_event: str,
    nxt: int | None,
    move: Callable[[Connection], bool],
) -> None:
    """Commit the saga's move with the task's effects and log it (``last_event`` too when ``nxt`` is None).

    Raises:
        Ignore: the saga had moved on (timed out, cancelled, done by another delivery);
            the task's transaction rolled back.
    """
    try:
        with _transaction(task) as conn:
            if not move(conn):
                raise _MovedOn()
            store.log(conn, saga_id, event, index, name)
            if nxt is None:
                store.log(conn, saga_id, last_event)
    except _MovedOn:
        _moved_on(task, saga_id, index, name)
        raise Ignore() from None


def _finished(phase: str | None = None, index: int | None = None) -> None:
    """Note that the body ran, and what to send once its transaction commits."""
    outcome = _outcome.get()
    if outcome is not None:
        outcome.ran = True
        if phase is not None and index is not None:
            outcome.sends.append((phase, index))


def _time_out(app: Celery, saga: Saga, saga_id: str, index: int) -> None:
    """Stop a saga found past its deadline at the start of a step, and send its first compensation."""
    with driver.engine(app).begin() as conn:
        row = store.get(conn, saga_id, lock=True)
        if row is None or row.state != RUNNING or row.step != index:
            return
        if not driver.stop(conn, saga, row, TIMEOUT, f"saga timed out after {saga.timeout_ms / 1000:g}s", None):
            return
        moved = store.get(conn, saga_id)
    if moved is not None:
        driver.send_current(app, saga, moved)


def record_failure(app: Celery, saga: Saga, phase: str, saga_id: str, index: int, exc: BaseException) -> None:
    """Record a step's or a compensation's final failure and send what comes next."""
    moved = None
    with driver.engine(app).begin() as conn:
        row = store.get(conn, saga_id, lock=True)
        if row is None:
            return
        if phase == DO:
            if (
                row.state == RUNNING
                and row.step == index
                and driver.stop(conn, saga, row, STEP_FAILED, _error(exc), index)
            ):
                moved = store.get(conn, saga_id)
        elif (
            row.state == COMPENSATING
            and row.step == index
            and store.compensation_failed(conn, saga_id, index, _error(exc))
        ):
            store.log(conn, saga_id, "compensation_failed", index, saga.steps[index].name, _error(exc))
            logger.error(
                "saga %s[%s]: compensation of step %r failed for good: %s; "
                "fix the cause, then `celery -A proj reliable saga resume %s`",
                saga.name,
                saga_id,
                saga.steps[index].name,
                _error(exc),
                saga_id,
            )
    if moved is not None:
        driver.send_current(app, saga, moved)


def _send_successor(app: Celery, saga: Saga, saga_id: str, phase: str, index: int) -> None:
    """After a replayed step: send the next one if the saga waits for exactly it (a crash lost the send)."""
    with driver.engine(app).connect() as conn:
        row = store.get(conn, saga_id)
    if row is None:
        return
    if phase == DO and row.state == RUNNING and row.step == index + 1:
        driver.send(app, saga, saga_id, DO, row.step)
    elif phase == UNDO and row.state == COMPENSATING and row.step == saga.compensable_below(index):
        driver.send(app, saga, saga_id, UNDO, row.step)
