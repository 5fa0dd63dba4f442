"""The worker bootstep: checks settings and Redis at start, runs the deferred-set pump and the outbox listener."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from .breaker_guard import check_breakers_known
from .bulkhead_guard import check_tiers_known
from .checks import check_redis
from .config import get_config, override_config
from .deferred.pump import Pump
from .locks.task_lock import check_backends
from .runtime import runtime

logger = logging.getLogger("celery_reliable")


class ReliableStep(bootsteps.StartStopStep):
    """Started in every worker (the parent process) by :func:`celery_reliable.install`."""

    label = "celery-reliable"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        # Parse the settings now: a wrong or unknown reliable_* setting stops the worker
        # at start-up with a message naming it, not at the first task.
        self.config = get_config(worker.app)
        if worker.app.conf.get("reliable_send_events") is None and getattr(worker, "task_events", False):
            # `celery worker -E` turns task events on without touching the setting; follow it.
            # Set before the pool forks, so every child sees it.
            self.config = override_config(worker.app, send_events=True)
        check_backends(worker.app.tasks, self.config)
        check_tiers_known(worker.app.tasks, self.config)
        check_breakers_known(worker.app.tasks, self.config)
        self.pump: Pump | None = None
        self.outbox_listener = _outbox_listener(worker.app)
        self.metrics = _metrics_server(worker.app, self.config)
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        rt = runtime(worker.app)
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as exc:  # the tasks still run; the log says why nothing is scraped
                logger.error("celery-reliable: cannot serve metrics on port %d: %r", self.metrics.port, exc)
        if self.config.check_redis:
            for problem in check_redis(rt.redis):
                logger.warning("celery-reliable: %s", problem)
        try:  # in the main thread: also loads the database driver before any fork
            rt.warm_up()
        except Exception as exc:
            logger.warning("celery-reliable: start-up warm-up failed, the pump will retry: %r", exc)
        if self.outbox_listener is not None:
            self.outbox_listener.start()
        if not self.config.pump_enabled:
            return
        self.pump = Pump(
            worker.app,
            rt.deferred(),
            interval=self.config.pump_interval_ms / 1000.0,
            batch=self.config.pump_batch,
            lease_ms=self.config.pump_lease_ms,
            on_maintenance=rt.warm_up,
        )
        self.pump.start()

    def stop(self, worker: Any) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.outbox_listener is not None:
            self.outbox_listener.stop()
            self.outbox_listener = None
        if self.pump is not None:
            self.pump.stop()
            self.pump = None

    shutdown = stop


def _metrics_server(app: Any, config: Any) -> Any:
    """The metrics endpoint when ``reliable_metrics_port`` is set, its counters already on (before the fork)."""
    if config.metrics_port is None:
        return None
    from .errors import ConfigurationError
    from .metrics.server import MetricsServer

    if config.metrics_port > 65535:
        raise ConfigurationError("reliable_metrics_port", f"expected a TCP port, got {config.metrics_port}")
    server = MetricsServer(app, config.metrics_port, config.metrics_addr)
    server.prepare()
    return server


def _outbox_listener(app: Any) -> Any:
    """The outbox listener when ``reliable_outbox_listen`` is on (checks the outbox settings either way)."""
    from .outbox.settings import outbox_config

    if not outbox_config(app).listen:
        return None
    from .errors import ConfigurationError
    from .outbox.listen import OutboxListener

    try:
        return OutboxListener(app)
    except ValueError as exc:
        raise ConfigurationError("reliable_outbox_listen", str(exc)) from None
