"""The Celery app the benchmark runs in real ``celery worker`` processes.

Configured from environment variables set by :mod:`bench.run`:

``BENCH_BROKER`` / ``BENCH_BACKEND``
    broker and result backend (Redis db 4 and 5 by default).
``BENCH_RELIABLE_REDIS``
    ``reliable_redis_url``: a private ``redis-server`` so its ``INFO commandstats`` see
    nothing but celery-reliable's own traffic.
``BENCH_DATABASE_URL``
    ``reliable_database_url``; unset means the Redis-only path. The plain insert task
    uses it too, through its own engine.
``BENCH_KEY_PREFIX``
    ``reliable_key_prefix``, one per mode so the two worker kinds never share keys.

Every task returns ``[prerun, body_start, body_end, pid]`` (times from ``time.time()``): ``prerun`` is
stamped by the ``task_prerun`` signal, which fires before ``ReliableTask.__call__``
and so before any guard. The result backend adds ``date_done`` when the result is
stored, after the guards' completion step. Deliveries from a queue whose name holds
``-count-`` are also counted exactly (see :mod:`bench.counting`) and the counts summed
into the hash ``bench:counts:<queue>`` of the result backend.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any
from urllib.parse import urlparse

from celery import Celery, Task, current_task, signals
from celery_once import QueueOnce
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import celery_reliable
from celery_reliable import ReliableTask
from celery_reliable.admission import Admission

from . import counting

env = os.environ.get

RELIABLE_REDIS = env("BENCH_RELIABLE_REDIS", "redis://127.0.0.1:6390/0")
DATABASE_URL = env("BENCH_DATABASE_URL") or None
INSERT = text("INSERT INTO bench_effects (n, task_id, kind) VALUES (:n, :t, :k)")

app = Celery("bench", broker=env("BENCH_BROKER", "redis://127.0.0.1:6379/4"),
             backend=env("BENCH_BACKEND", "redis://127.0.0.1:6379/5"))
app.conf.update(
    reliable_redis_url=RELIABLE_REDIS,
    reliable_database_url=DATABASE_URL,
    reliable_key_prefix=env("BENCH_KEY_PREFIX", "rbench"),
    # The guards of bench.reliable_guarded: never full, never open, never limiting.
    reliable_bulkheads={"bench": 64},
    reliable_circuit_breakers={"bench": {"failure_threshold": 5, "recovery_timeout": 30}},
    # The settings celery-reliable's own tests use for at-least-once delivery; the
    # plain tasks run in the same workers with the same settings.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=int(env("BENCH_PREFETCH", "4")),
    task_default_queue="bench-default",
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # celery-once, for the publish-time dedup comparison (a separate db of the same server).
    ONCE={"backend": "celery_once.backends.Redis",
          "settings": {"url": RELIABLE_REDIS.rsplit("/", 1)[0] + "/1", "default_timeout": 3600}},
)
celery_reliable.install(app, beat=False)
counting.install(urlparse(RELIABLE_REDIS).port or 6379)

_local = threading.local()
_engines: dict[int, Engine] = {}


def plain_engine() -> Engine:
    """This process's engine for the plain insert task (Celery users make their own)."""
    pid = os.getpid()
    if pid not in _engines:
        assert DATABASE_URL, "BENCH_DATABASE_URL is not set"
        _engines[pid] = create_engine(DATABASE_URL)
    return _engines[pid]


def _stamps(body_start: float) -> list[float]:
    return [getattr(_local, "prerun", body_start), body_start, time.time(), os.getpid()]


@signals.task_prerun.connect
def _on_prerun(task: Task | None = None, **_: Any) -> None:
    _local.prerun = time.time()
    if "-count-" in _queue(task):
        counting.start()


@signals.task_postrun.connect
def _on_postrun(task: Task | None = None, **_: Any) -> None:
    queue = _queue(task)
    if "-count-" not in queue:
        return
    counts = counting.stop()
    counts["tasks"] += 1
    pipe = app.backend.client.pipeline(transaction=False)
    for name, value in counts.items():
        pipe.hincrby(f"bench:counts:{queue}", name, value)
    pipe.execute()


def _queue(task: Task | None) -> str:
    info = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


@app.task(name="bench.plain_noop")
def plain_noop(n: str) -> list[float]:
    """Plain Celery, trivial work."""
    return _stamps(time.time())


@app.task(name="bench.reliable_noop", base=ReliableTask, bind=True, idempotency_key="k:{n}")
def reliable_noop(self: ReliableTask, n: str) -> list[float]:
    """ReliableTask with an idempotency key, trivial work."""
    return _stamps(time.time())


@app.task(name="bench.reliable_guarded", base=ReliableTask, bind=True, idempotency_key="k:{n}",
          global_rate_limit="100000/s", circuit_breaker="bench", bulkhead="bench", lock_key="g:{n}",
          retry_policy=True, retry_budget=True)
def reliable_guarded(self: ReliableTask, n: str) -> list[float]:
    """ReliableTask behind every guard on Redis: key, global rate limit, breaker, bulkhead, budget, lock."""
    return _stamps(time.time())


@app.task(name="bench.reliable_guarded_each", base=ReliableTask, bind=True, idempotency_key="k:{n}",
          global_rate_limit="100000/s", circuit_breaker="bench", bulkhead="bench", lock_key="g:{n}",
          retry_policy=True, retry_budget=True)
def reliable_guarded_each(self: ReliableTask, n: str) -> list[float]:
    """The same guards as ``reliable_guarded``, each asked and given back on its own (see below)."""
    return _stamps(time.time())


# For the comparison only: ``reliable_guarded_each`` skips the admission round trip and the
# completion batch, so every guard makes its own call, as a task did before they existed.
_ask, _hold = Admission.ask, Admission.hold


def _each() -> bool:
    return getattr(current_task, "name", None) == "bench.reliable_guarded_each"


def _ask_unless_each(self: Admission, rt: Any) -> None:
    if not _each():
        _ask(self, rt)


def _hold_unless_each(self: Admission, release: Any) -> None:
    if not _each():
        _hold(self, release)


Admission.ask = _ask_unless_each  # type: ignore[method-assign]
Admission.hold = _hold_unless_each  # type: ignore[method-assign]


@app.task(name="bench.plain_insert", bind=True)
def plain_insert(self: Task, n: str) -> list[float]:
    """Plain Celery writing one row in its own SQLAlchemy transaction."""
    start = time.time()
    with Session(plain_engine()) as session, session.begin():
        session.execute(INSERT, {"n": n, "t": self.request.id, "k": "plain"})
    return _stamps(start)


@app.task(name="bench.reliable_insert", base=ReliableTask, bind=True, idempotency_key="k:{n}")
def reliable_insert(self: ReliableTask, n: str) -> list[float]:
    """ReliableTask writing one row through ``self.transaction()`` (exactly-once effect)."""
    start = time.time()
    with self.transaction() as session:
        session.execute(INSERT, {"n": n, "t": self.request.id, "k": "reliable"})
    return _stamps(start)


# Publish-time dedup comparison: only published, never run by a worker.
@app.task(name="bench.plain_pub")
def plain_pub(n: str) -> None:
    """Plain Celery: no dedup at publish."""


@app.task(name="bench.once_pub", base=QueueOnce, once={"graceful": True, "keys": ["n"]})
def once_pub(n: str) -> None:
    """celery-once: a Redis lock taken at publish, released when the task finishes."""


@app.task(name="bench.reliable_pub", base=ReliableTask, bind=True, idempotency_key="p:{n}",
          idempotency_on_publish=True)
def reliable_pub(self: ReliableTask, n: str) -> None:
    """celery-reliable: publish mark kept for the key's TTL."""


TASKS = {t.name.split(".", 1)[1]: t for t in (plain_noop, reliable_noop, reliable_guarded, reliable_guarded_each,
                                             plain_insert, reliable_insert, plain_pub, once_pub, reliable_pub)}
