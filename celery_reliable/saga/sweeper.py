"""Where :func:`~celery_reliable.saga.sweep_sagas` runs: a worker bootstep thread, or a beat job.

Either is enough; both at once are safe (rows are claimed with ``SKIP LOCKED``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from ..config import as_seconds
from .driver import SWEEP_BATCH, sweep_sagas
from .saga import defined_sagas

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("celery_reliable")

#: The maintenance task that sweeps sagas (for beat).
SWEEP_TASK = "celery_reliable.sweep_sagas"

#: Seconds between sweeps unless ``reliable_saga_sweep_interval`` says otherwise. A step
#: whose worker died is driven again within its lease plus this.
DEFAULT_INTERVAL = 5.0


def sweep_interval(app: Celery) -> float:
    """``reliable_saga_sweep_interval`` in seconds (at least 0.05), default 5."""
    value = app.conf.get("reliable_saga_sweep_interval")
    return DEFAULT_INTERVAL if value is None else max(as_seconds("reliable_saga_sweep_interval", value), 0.05)


class SagaSweeper(bootsteps.StartStopStep):
    """A worker bootstep: a thread of the worker's main process that sweeps sagas.

    It starts only in workers whose app defines at least one saga. Add it with
    ``app.steps["worker"].add(SagaSweeper)``; subclass it to change :attr:`interval`.
    """

    label = "celery-reliable-sagas"
    #: Seconds between sweeps; ``None`` reads ``reliable_saga_sweep_interval`` (default 5 s).
    interval: float | None = None

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        """Start the sweeping thread (only if a saga is defined)."""
        if not defined_sagas():
            return
        app = worker.app
        every = self.interval if self.interval is not None else sweep_interval(app)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(app, every), name="reliable-saga-sweep", daemon=True)
        self._thread.start()

    def _run(self, app: Celery, every: float) -> None:
        while not self._stop.wait(every):
            try:
                sweep_sagas(app, SWEEP_BATCH)
            except Exception as exc:  # the database may be down for a while; try again next round
                logger.warning("celery-reliable: saga sweep failed: %r", exc)

    def stop(self, worker: Any) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    shutdown = stop


def register(app: Celery) -> None:
    """Register the ``celery_reliable.sweep_sagas`` task on ``app`` (once)."""
    if SWEEP_TASK in app.tasks:
        return

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def _sweep_sagas() -> dict[str, int]:
        # A worker of an app without sagas (or without a database) has nothing to sweep.
        if not defined_sagas() or not app.conf.get("reliable_database_url"):
            return {"timed_out": 0, "redriven": 0}
        return sweep_sagas(app)


def beat_entry(app: Celery) -> dict[str, dict[str, Any]]:
    """The beat entry of the saga sweep, to merge into ``beat_schedule``."""
    every = sweep_interval(app)
    return {
        "celery-reliable-sweep-sagas": {
            "task": SWEEP_TASK,
            "schedule": every,
            "options": {"expires": max(5.0, 2 * every)},
        }
    }
