"""Queue depths of the queues an app routes to, as ``reliable status`` shows them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..bulkhead.queue_depth import read_depth
from .probe import TIMEOUT, guarded

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection

    from ..config import ReliableConfig


def _routed(routes: Any) -> set[str]:
    """Queue names written plainly in ``task_routes`` (a dict, or a list of dicts); routers are skipped."""
    tables = routes if isinstance(routes, (list, tuple)) else [routes]
    names: set[str] = set()
    for table in tables:
        if not isinstance(table, Mapping):
            continue
        for target in table.values():
            queue = target.get("queue") if isinstance(target, Mapping) else target
            name = getattr(queue, "name", queue)
            if isinstance(name, str) and name:
                names.add(name)
    return names


def queue_names(app: Celery, cfg: ReliableConfig) -> list[str]:
    """The default queue, ``task_queues``, queues named in ``task_routes`` and by tasks, and the tier queues."""
    conf = app.conf
    names = {str(conf.task_default_queue)}
    for queue in conf.task_queues or ():
        names.add(str(getattr(queue, "name", queue)))
    names |= _routed(conf.task_routes)
    for task in app.tasks.values():
        queue = getattr(task, "queue", None)
        if isinstance(queue, str) and queue:
            names.add(queue)
    names |= set(cfg.bulkheads)  # the reference workers consume one queue per tier, named after it
    return sorted(names)


def broker_connection(app: Celery) -> Connection:
    """A new connection to the app's broker that gives up after :data:`~.probe.TIMEOUT` seconds."""
    options = {**(app.conf.broker_transport_options or {}), "socket_timeout": TIMEOUT}
    options["socket_connect_timeout"] = TIMEOUT
    return app.connection_for_write(connect_timeout=TIMEOUT, transport_options=options)


def connect(connection: Connection) -> None:
    """Connect once, without the retries and sleeps of kombu's defaults.

    Raises:
        kombu's OperationalError: when the broker cannot be reached.
    """
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=TIMEOUT)


def depths(app: Celery, cfg: ReliableConfig, secrets: Iterable[str]) -> dict[str, Any]:
    """Messages waiting in each queue (ready ones, not those delivered and unacknowledged).

    Returns:
        queue name to its depth; ``{"unavailable": ...}`` for the whole section when the
        broker cannot be reached, or in a queue's place when only its read failed.
    """
    connection = broker_connection(app)
    try:
        connect(connection)
        names = queue_names(app, cfg)
        return {name: guarded(functools.partial(read_depth, connection, name), secrets) for name in names}
    finally:
        with contextlib.suppress(Exception):
            connection.release()
