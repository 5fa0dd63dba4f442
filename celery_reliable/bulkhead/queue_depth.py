"""Queue depth: messages waiting in a broker queue, read cheaply enough to check per publish.

- Redis broker: ``LLEN`` of the queue's list and of the sub-lists kombu keeps per
  priority step (``<queue>\\x06\\x16<step>``, the channel's ``sep`` and
  ``priority_steps``), one pipelined round trip; the broker's ``global_keyprefix`` is
  applied by kombu's client.
- RabbitMQ (and any other transport): a passive ``queue_declare``, whose
  ``message_count`` counts the ready messages.

A queue that does not exist holds 0 messages. Readings are cached per process for
``max_age`` seconds (default 1) per broker and queue, so a ``max_queue_depth`` check on
every ``apply_async`` costs a broker round trip at most once a second per queue.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from datetime import timedelta
from typing import Any

from kombu import Connection

from ..config import as_seconds
from ..errors import ConfigurationError, QueueFull
from ..ratelimit.base import check_count, check_text

#: How long a depth reading is reused by default, in seconds.
DEFAULT_MAX_AGE = 1.0


def read_depth(connection: Connection, queue: str) -> int:
    """Read the depth of ``queue`` now, through a kombu ``connection`` (no cache).

    Args:
        connection: a kombu connection to the broker (connected on demand).
        queue: the queue's name.

    Returns:
        Messages waiting in the queue (not those delivered and unacknowledged); 0 when
        the queue does not exist.
    """
    if connection.transport.driver_type == "redis":
        return _redis_depth(connection, queue)
    return _declared_depth(connection, queue)


def _redis_depth(connection: Connection, queue: str) -> int:
    channel: Any = connection.default_channel
    # kombu keeps a priority step's messages in "<queue><sep><step>" (step 0: the queue's own list).
    names = [queue] + [f"{queue}{channel.sep}{step}" for step in sorted(set(channel.priority_steps)) if step]
    with channel.client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        sizes = pipe.execute()
    return sum(int(size) for size in sizes)


def _declared_depth(connection: Connection, queue: str) -> int:
    # A channel of its own: a passive declare of a missing queue closes the channel
    # (AMQP 404), which must not break the connection's default channel publishers use.
    channel: Any = connection.channel()
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except connection.channel_errors as exc:
        if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc):
            return 0
        raise
    finally:
        with contextlib.suppress(*connection.connection_errors, *connection.channel_errors):
            channel.close()


class DepthCache:
    """Depth readings of this process, per broker (an app or a connection) and queue."""

    def __init__(self) -> None:
        self._readings: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, int]]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, source: Any, queue: str, max_age: float) -> int | None:
        """The reading of ``queue`` on ``source`` if younger than ``max_age`` seconds."""
        with self._lock:
            found = self._readings.get(source, {}).get(queue)
        if found is None or time.monotonic() - found[0] >= max_age:
            return None
        return found[1]

    def put(self, source: Any, queue: str, depth: int) -> None:
        """Remember a reading taken now."""
        with self._lock:
            self._readings.setdefault(source, {})[queue] = (time.monotonic(), depth)

    def clear(self) -> None:
        """Forget every reading (and a lock a forking thread may have held)."""
        self._readings = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()


_cache = DepthCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_cache.clear)


def _max_age(value: float | timedelta) -> float:
    seconds = as_seconds("max_age", value)
    if not seconds >= 0:
        raise ConfigurationError("max_age", f"must be a non-negative duration, got {value!r}")
    return seconds


def queue_depth(app_or_connection: Any, queue: str, *, max_age: float | timedelta = DEFAULT_MAX_AGE) -> int:
    """Messages waiting in ``queue``, from a reading at most ``max_age`` seconds old.

    Args:
        app_or_connection: a Celery app (its producer connection pool is used) or a
            kombu ``Connection``.
        queue: the queue's name.
        max_age: reuse this process's last reading of the queue if younger (0: read now).

    Returns:
        The depth; 0 for a queue that does not exist.

    Raises:
        ConfigurationError: for a bad queue name or ``max_age``.
        kombu's connection errors: when the broker cannot be reached.
    """
    check_text("queue", queue)
    age = _max_age(max_age)
    try:
        cached = _cache.get(app_or_connection, queue, age) if age > 0 else None
    except TypeError:  # not weakly referenceable: no caching
        cached, age = None, 0.0
    if cached is not None:
        return cached
    if isinstance(app_or_connection, Connection):
        depth = read_depth(app_or_connection, queue)
    else:
        with app_or_connection.pool.acquire(block=True) as connection:
            depth = read_depth(connection, queue)
    if age > 0:
        _cache.put(app_or_connection, queue, depth)
    return depth


def check_queue_depth(
    app_or_connection: Any, queue: str, max_depth: int, *, max_age: float | timedelta = DEFAULT_MAX_AGE
) -> int:
    """Refuse a publish to a queue that already holds ``max_depth`` messages or more.

    Args:
        app_or_connection: a Celery app or a kombu ``Connection``.
        queue: the queue the message would go to.
        max_depth: the most messages the queue may hold before publishes are refused.
        max_age: see :func:`queue_depth`.

    Returns:
        The depth read, when below ``max_depth``.

    Raises:
        QueueFull: when the depth is ``max_depth`` or more.
        ConfigurationError: for a ``max_depth`` that is not a positive int.
    """
    limit = check_count("max_queue_depth", max_depth)
    depth = queue_depth(app_or_connection, queue, max_age=max_age)
    if depth >= limit:
        raise QueueFull(queue, depth, limit)
    return depth
