"""``Saga``: a named sequence of steps with compensations, started with :meth:`Saga.start`."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..config import as_seconds
from ..jsoncodec import dumps, sha256_hex
from .errors import SagaConflict, SagaDefinitionError
from .step import NAME_RE, Step

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.orm import Session

logger = logging.getLogger("celery_reliable")

#: The saga-wide timeout unless a saga says otherwise: two hours, the longest a
#: distributed transaction should stay open. Past it, the saga compensates.
DEFAULT_TIMEOUT = timedelta(hours=2)

#: Longest saga id stored.
MAX_ID_CHARS = 255

DO = "do"
UNDO = "compensate"

_registry: dict[str, Saga] = {}
_registry_lock = threading.Lock()


def get_saga(name: str) -> Saga | None:
    """The saga defined under ``name`` in this process, if any."""
    return _registry.get(name)


def defined_sagas() -> dict[str, Saga]:
    """Every saga defined in this process, by name."""
    return dict(_registry)


class Saga:
    """A sequence of steps that either all complete or are undone, last first.

    ::

        book_trip = Saga(
            "book_trip",
            steps=[
                Step(reserve_hotel, compensate=cancel_hotel),
                Step(charge_card, compensate=refund_card, retry_policy=RetryPolicy(max_attempts=3)),
                Step(send_confirmation),
            ],
            timeout=timedelta(minutes=30),
            app=app,
        )
        saga_id = book_trip.start(app, {"user_id": 7, "hotel": "h-1"})

    Each step receives the saga's context (the payload merged with the dict results of
    the steps before it) and returns a dict to merge, or ``None``. A step that fails
    (after its own retries, if it has a ``retry_policy``) stops the saga, and the
    compensations of the completed steps run in reverse order. So does passing the
    saga-wide ``timeout`` (measured on the database's clock from :meth:`start`) or
    :meth:`cancel`. The saga's state lives in the saga log (``reliable_sagas``, migration
    ``0009_sagas``); a step whose worker died is driven again once its lease runs out by
    :func:`~celery_reliable.saga.sweep_sagas` (a worker bootstep or beat job).

    Define sagas at import time of a module your workers import, as you define tasks.

    Args:
        name: unique name (letters, digits, ``_ . : -``); it prefixes the step task names.
        steps: :class:`Step` objects (a bare callable is ``Step(callable)``: no compensation).
        timeout: seconds or timedelta, default 2 hours.
        app: register the step tasks on this app; ``None`` registers them on every app,
            like ``@shared_task``.

    Raises:
        SagaDefinitionError: no steps, a non-callable step, duplicate step or saga names,
            or a timeout that is not a positive duration.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Step | Callable[..., Any]],
        *,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        app: Celery | None = None,
    ) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise SagaDefinitionError(str(name), f"bad saga name {name!r} (letters, digits, _ . : -, at most 100)")
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
            raise SagaDefinitionError(name, f"a saga needs a non-empty list of steps, got {steps!r}")
        checked: list[Step] = []
        for i, step in enumerate(steps):
            if isinstance(step, Step):
                checked.append(step)
            elif callable(step):
                checked.append(Step(step))
            else:
                raise SagaDefinitionError(name, f"step {i} must be a Step or a callable, got {step!r}")
        names = [s.name for s in checked]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SagaDefinitionError(
                name, f"duplicate step name(s) {', '.join(map(repr, dupes))}; pass name= to tell them apart"
            )
        try:
            seconds = as_seconds("timeout", timeout)
        except Exception as exc:
            raise SagaDefinitionError(name, str(exc)) from None
        if not seconds > 0:
            raise SagaDefinitionError(name, f"timeout must be a positive duration, got {timeout!r}")
        self.name = name
        self.steps: tuple[Step, ...] = tuple(checked)
        self.timeout_ms = round(seconds * 1000)
        with _registry_lock:
            if name in _registry:
                raise SagaDefinitionError(name, f"a saga named {name!r} is already defined in this process")
            _registry[name] = self
        from .tasks import register_tasks

        try:
            register_tasks(self, app)
        except BaseException:
            with _registry_lock:
                _registry.pop(name, None)
            raise

    def __repr__(self) -> str:
        return (
            f"Saga({self.name!r}, steps=[{', '.join(s.name for s in self.steps)}], timeout={self.timeout_ms / 1000}s)"
        )

    def task_name(self, index: int, phase: str = DO) -> str:
        """The Celery task name of step ``index`` (``phase`` ``"do"``) or of its compensation."""
        base = f"saga.{self.name}.{self.steps[index].name}"
        return base if phase == DO else f"{base}.{UNDO}"

    def compensable_below(self, index: int) -> int | None:
        """The highest step index under ``index`` that has a compensation, or ``None``."""
        for j in range(min(index, len(self.steps)) - 1, -1, -1):
            if self.steps[j].compensate is not None:
                return j
        return None

    def start(
        self,
        app: Celery,
        payload: dict[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        session: Session | None = None,
    ) -> str:
        """Record a new saga and send its first step.

        Args:
            app: the Celery app (its ``reliable_database_url`` holds the saga log).
            payload: the initial context: a JSON-encodable dict with str keys.
            saga_id: an id of your own (an order id) to start at most once: starting the
                same id again with the same saga and payload returns it without a second
                run. Default: a new random id.
            session: write the saga in this SQLAlchemy session's transaction; the first
                step is sent after it commits, and nothing happens if it rolls back.

        Returns:
            The saga id.

        Raises:
            TypeError: a payload that is not a dict.
            SerializationError: a payload JSON cannot hold (the message names the part).
            SagaConflict: ``saga_id`` exists with another saga or payload.
        """
        from . import driver, store

        context = {} if payload is None else payload
        if not isinstance(context, dict):
            raise TypeError(f"saga {self.name!r}: the payload must be a dict, got {type(context).__name__}")
        for key in context:
            if not isinstance(key, str):
                raise TypeError(f"saga {self.name!r}: payload keys must be str, got {key!r}")
        text = dumps(context, where=f"payload of saga {self.name!r}")
        fp = sha256_hex(f"{self.name}\n{text}")
        saga_id = uuid.uuid4().hex if saga_id is None else saga_id
        if not isinstance(saga_id, str) or not saga_id or len(saga_id) > MAX_ID_CHARS or not saga_id.isprintable():
            raise ValueError(f"saga_id must be a printable str of 1 to {MAX_ID_CHARS} characters, got {saga_id!r}")
        lease_ms = self.steps[0].lease_ms

        def write(conn: Any) -> bool:
            if store.insert_saga(conn, saga_id, self.name, len(self.steps), text, fp, self.timeout_ms, lease_ms):
                steps = [s.name for s in self.steps]
                store.log(conn, saga_id, "started", detail={"timeout_s": self.timeout_ms / 1000, "steps": steps})
                return True
            found = store.get(conn, saga_id)
            if found is not None and (found.name != self.name or found.fingerprint != fp):
                raise SagaConflict(saga_id, f"saga id {saga_id!r} was started as {found.name!r} with another payload")
            return False

        if session is not None:
            if write(session.connection()):
                _send_after_commit(session, lambda: driver.send(app, self, saga_id, DO, 0))
            return saga_id
        with driver.engine(app).begin() as conn:
            fresh = write(conn)
        if fresh:
            driver.send(app, self, saga_id, DO, 0)
        return saga_id

    def cancel(self, app: Celery, saga_id: str, reason: str = "cancelled") -> bool:
        """Stop a running saga and compensate its completed steps.

        Returns:
            ``True`` if the saga was running and now compensates, ``False`` if it had
            already finished or was compensating.

        Raises:
            SagaNotFound: no saga with this id.
        """
        from .driver import cancel

        return cancel(app, saga_id, reason)


def _send_after_commit(session: Session, send: Callable[[], object]) -> None:
    """Call ``send`` once ``session``'s transaction commits; never if it rolls back first."""
    from sqlalchemy import event

    ended: list[bool] = []

    def committed(_session: Session) -> None:
        if not ended:
            ended.append(True)
            send()

    def rolled_back(_session: Session) -> None:
        ended.append(False)

    event.listen(session, "after_commit", committed, once=True)
    event.listen(session, "after_rollback", rolled_back, once=True)
