"""Serve the metrics over HTTP: from the worker's parent process, or from the CLI.

Prefork: tasks run in pool children, but the endpoint is served by the parent. So the
counters use ``prometheus_client``'s multiprocess mode: :func:`prepare_multiprocess`
(called by the worker bootstep in the parent, before the pool forks) points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, every process then writes its counters
to its own memory-mapped file there, and the parent's endpoint sums them with
``MultiProcessCollector``. A child that exits leaves its file, so its counts are kept
(``mark_process_dead`` runs on ``worker_process_shutdown`` for live gauges). A directory
the user set is used as is: empty it before the worker starts, as prometheus_client asks.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("celery_reliable")

#: The environment variable prometheus_client reads to choose multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "reliable_metrics_port", "needs prometheus_client: pip install 'celery-reliable[metrics]'"
        ) from None


def prepare_multiprocess() -> tuple[str, bool]:
    """Switch this process (and the children it forks later) to multiprocess counters.

    Returns:
        The directory, and whether we created it (and so remove it at stop).

    Raises:
        ConfigurationError: when prometheus_client is not installed.
    """
    _require_client()
    path = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    created = not path
    if not path:
        path = tempfile.mkdtemp(prefix="celery-reliable-metrics-")
    os.environ[MULTIPROC_ENV] = path
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client chose its value class when first imported (here, or by the
        # app before us); metrics created from now on must write to the shared files.
        values.ValueClass = values.get_value_class()
    return path, created


def _mark_dead(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid)
    except Exception as exc:  # bookkeeping only
        logger.debug("celery-reliable metrics: mark_process_dead failed: %r", exc)


def registry(app: Celery, queues: Sequence[str] | None = None, multiprocess_dir: str | None = None) -> Any:
    """A registry with the app's gauges and, given ``multiprocess_dir``, the summed counters."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from .collector import ReliableCollector
    from .sources import AppSource

    reg = CollectorRegistry()
    if multiprocess_dir is not None:
        MultiProcessCollector(reg, path=multiprocess_dir)
    reg.register(ReliableCollector(AppSource(app, queues)))
    return reg


@dataclass
class MetricsServer:
    """The worker's metrics endpoint: ``prepare`` before the pool forks, then ``start``, ``stop``."""

    app: Celery
    port: int
    addr: str
    directory: str = ""
    created: bool = False
    httpd: Any = None

    def prepare(self) -> None:
        """Turn on multiprocess counters (in the parent, before any child is forked)."""
        from celery import signals

        from . import counters

        self.directory, self.created = prepare_multiprocess()
        counters.enable()
        signals.worker_process_shutdown.connect(_mark_dead, weak=False, dispatch_uid="celery_reliable.metrics_dead")

    def start(self, queues: Sequence[str] | None = None) -> None:
        """Serve ``/metrics`` from a daemon thread of this process."""
        from prometheus_client import start_http_server

        reg = registry(self.app, queues, self.directory)
        self.httpd, _ = start_http_server(self.port, addr=self.addr, registry=reg)
        logger.info("celery-reliable: metrics on http://%s:%d/metrics", self.addr, self.port)

    def stop(self) -> None:
        """Stop serving and remove the directory we created."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.created and self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.created = False
