"""Sagas: a sequence of Celery steps that either all complete or are compensated, last first.

::

    from celery_reliable.saga import Saga, Step

    book_trip = Saga(
        "book_trip",
        steps=[Step(reserve_hotel, compensate=cancel_hotel), Step(charge_card, compensate=refund_card)],
        timeout=timedelta(hours=1),
        app=app,
    )
    saga_id = book_trip.start(app, {"user_id": 7})

- :class:`Saga` and :class:`Step` declare it (:mod:`.saga`, :mod:`.step`); every step and
  compensation is a :class:`~celery_reliable.ReliableTask` keyed by saga id and step index
  (:mod:`.tasks`);
- the saga log is ``reliable_sagas`` and ``reliable_saga_log`` (migration ``0009_sagas``,
  :mod:`.model`, :mod:`.store`);
- :func:`sweep_sagas` times sagas out and drives lost steps again (:mod:`.driver`), run by
  the :class:`SagaSweeper` worker bootstep or the ``celery_reliable.sweep_sagas`` beat job
  (:mod:`.sweeper`);
- :func:`saga_status` and :func:`list_sagas` read it; ``celery -A proj reliable saga`` shows
  it (:mod:`.cli`).
"""

from __future__ import annotations

from .driver import cancel, resume, sweep_sagas
from .errors import SagaConflict, SagaDefinitionError, SagaError, SagaNotFound, StepResultError
from .model import CANCELLED, COMPENSATED, COMPENSATING, COMPLETED, FAILED, RUNNING, STEP_FAILED, TIMEOUT
from .saga import DEFAULT_TIMEOUT, Saga, defined_sagas, get_saga
from .status import list_sagas, saga_status
from .step import Step
from .sweeper import SWEEP_TASK, SagaSweeper

__all__ = [
    "CANCELLED",
    "COMPENSATED",
    "COMPENSATING",
    "COMPLETED",
    "DEFAULT_TIMEOUT",
    "FAILED",
    "RUNNING",
    "STEP_FAILED",
    "SWEEP_TASK",
    "TIMEOUT",
    "Saga",
    "SagaConflict",
    "SagaDefinitionError",
    "SagaError",
    "SagaNotFound",
    "SagaSweeper",
    "Step",
    "StepResultError",
    "cancel",
    "defined_sagas",
    "get_saga",
    "list_sagas",
    "resume",
    "saga_status",
    "sweep_sagas",
]
