"""The Celery app the retry / dead-letter benchmark (:mod:`bench.retries`) runs in real workers.

Configured from environment variables set by the runner:

``BENCH_BROKER`` / ``BENCH_BACKEND`` / ``BENCH_RELIABLE_REDIS``
    three private ``redis-server`` processes, so ``INFO commandstats`` of the broker and
    of the reliable Redis see nothing but this benchmark's traffic.
``BENCH_DATABASE_URL``
    ``reliable_database_url``: where the exhausted tasks are dead-lettered.

Tasks, in pairs run by the same worker:

* ``retry.plain_fail`` / ``retry.reliable_fail``: always raise ``ConnectionError``. The
  plain one retries with Celery's ``self.retry(countdown=...)`` (an ETA message the worker
  holds in memory), drawing its countdowns from the same policy; the reliable one has
  ``retry_policy=RetryPolicy(max_attempts=4, base=0.01, cap=0.05)`` (retries parked in the
  deferred set, the 4th failure dead-lettered). Both make 4 attempts, i.e. 3 retries.
* ``retry.plain_ok`` / ``retry.reliable_ok``: succeed at once; the baseline that the
  per-retry figures subtract (a first delivery costs broker commands too).
* ``retry.plain_eta`` / ``retry.reliable_park``: the 1 h backoff of the memory test.

What every worker process records, and writes every 0.2 s to the result backend (a
separate server, so this never shows in the figures):

* each attempt, as ``[pid, task id, retries, task_prerun time, task_postrun time]`` (worker
  clock), appended to the list ``retry:attempts:<queue>``;
* cumulative counts, as JSON in ``retry:stats:<pid>`` (written after the attempts, with the
  time of the write): Redis round trips and commands sent to the reliable Redis from
  **every** thread (task threads, the deferred-set pump, the heartbeat) through
  :mod:`bench.counting`; SQL statements; entries parked, pump steps that moved entries
  and entries moved.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import redis
from celery import Celery, Task, signals

import celery_reliable
from celery_reliable import ReliableTask, RetryPolicy
from celery_reliable.deferred.store import DeferredSet

from . import counting

env = os.environ.get

RELIABLE_REDIS = env("BENCH_RELIABLE_REDIS", "redis://127.0.0.1:6391/0")
BACKEND = env("BENCH_BACKEND", "redis://127.0.0.1:6393/0")
STATS_KEY = "retry:stats:"
ATTEMPTS_KEY = "retry:attempts:"
FLUSH_EVERY = 0.2

#: The retry policy of the throughput / command-count tasks (the issue's).
FAIL_POLICY = RetryPolicy(max_attempts=4, base=0.01, cap=0.05)
#: The memory test's policy: one retry, one hour later.
PARK_POLICY = RetryPolicy(max_attempts=2, base=3600, cap=3600, jitter="none")

app = Celery("retry_bench", broker=env("BENCH_BROKER", "redis://127.0.0.1:6392/0"), backend=BACKEND)
app.conf.update(
    reliable_redis_url=RELIABLE_REDIS,
    reliable_database_url=env("BENCH_DATABASE_URL") or None,
    reliable_key_prefix="rretry",
    # The same settings as bench.app (celery-reliable's at-least-once settings).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    task_default_queue="retry-default",
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
celery_reliable.install(app, beat=False)


# -- counting in every thread ---------------------------------------------------------

_registry: list[Counter[str]] = []


class _EveryThread(threading.local):
    """``bench.counting``'s per-thread state, always on and registered for summing."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        _registry.append(self.counts)


counting._local = _EveryThread()  # type: ignore[assignment]
counting.install(urlparse(RELIABLE_REDIS).port or 6379)

_mine: Counter[str] = Counter()  # parks and pump steps (one thread each: distinct keys)
_attempts: dict[str, list[list[Any]]] = {}  # queue -> [[pid, task id, retries, prerun, postrun], ...]
_pushed: dict[str, int] = {}  # queue -> rows already written to Redis
_prerun = threading.local()


def _reset_after_fork() -> None:
    for c in _registry:
        c.clear()
    _mine.clear()
    _attempts.clear()
    _pushed.clear()


os.register_at_fork(after_in_child=_reset_after_fork)

_park = DeferredSet.park
_take = DeferredSet.take


def _counted_park(self: DeferredSet, entry: str, delay_ms: int) -> int:
    _mine["parks"] += 1
    _mine["parked_bytes"] += len(entry.encode())
    return _park(self, entry, delay_ms)


def _counted_take(self: DeferredSet, limit: int, lease_ms: int) -> list[bytes]:
    taken = _take(self, limit, lease_ms)
    _mine["pump_takes"] += 1
    if taken:
        _mine["pump_steps_moving"] += 1
        _mine["pump_moved"] += len(taken)
    return taken


DeferredSet.park = _counted_park  # type: ignore[method-assign]
DeferredSet.take = _counted_take  # type: ignore[method-assign]


def snapshot(t: float | None = None) -> dict[str, Any]:
    """This process's cumulative figures (``t``: when they were taken)."""
    t = time.time() if t is None else t
    total: Counter[str] = Counter()
    for c in list(_registry):
        total.update(dict(c))
    return {"t": t, "pid": os.getpid(), "counts": dict(total), "mine": dict(_mine)}


_flusher_pid = 0


def _flush_loop() -> None:
    client = redis.Redis.from_url(BACKEND)
    key = f"{STATS_KEY}{os.getpid()}"
    while True:
        with contextlib.suppress(Exception):  # the runner notices stale figures; never kill the worker
            t = time.time()  # everything recorded before t is in this write
            pipe = client.pipeline(transaction=False)
            upto = {}
            for queue, rows in list(_attempts.items()):
                done = _pushed.get(queue, 0)
                new = rows[done:]
                if new:
                    pipe.rpush(f"{ATTEMPTS_KEY}{queue}", *(json.dumps(r) for r in new))
                    upto[queue] = done + len(new)
            pipe.set(key, json.dumps(snapshot(t)), ex=3600)
            pipe.execute()
            _pushed.update(upto)
        time.sleep(FLUSH_EVERY)


def _start_flusher(**_: Any) -> None:
    global _flusher_pid
    if _flusher_pid == os.getpid():
        return
    _flusher_pid = os.getpid()
    threading.Thread(target=_flush_loop, name="bench-flusher", daemon=True).start()


signals.worker_init.connect(_start_flusher, weak=False)
signals.worker_process_init.connect(_start_flusher, weak=False)


def _queue(task: Task | None) -> str:
    info = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    return str(info.get("routing_key") or "")


@signals.task_prerun.connect
def _on_prerun(task: Task | None = None, **_: Any) -> None:
    _prerun.at = time.time()
    _prerun.retries = int(getattr(getattr(task, "request", None), "retries", 0) or 0)


@signals.task_postrun.connect
def _on_postrun(task: Task | None = None, task_id: str = "", **_: Any) -> None:
    row = [os.getpid(), task_id, _prerun.retries, _prerun.at, time.time()]
    _attempts.setdefault(_queue(task), []).append(row)


# -- the tasks ------------------------------------------------------------------------


def _down(n: int) -> ConnectionError:
    return ConnectionError(f"payment gateway unreachable (order {n}): connection refused")


@app.task(name="retry.plain_fail", bind=True, max_retries=FAIL_POLICY.max_attempts - 1)
def plain_fail(self: Task, n: int, order: dict[str, Any]) -> None:
    """Plain Celery: always fails, retried by ``self.retry`` with the policy's jittered countdown."""
    try:
        raise _down(n)
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=FAIL_POLICY.delay(self.request.retries)) from exc


@app.task(name="retry.reliable_fail", base=ReliableTask, bind=True, retry_policy=FAIL_POLICY)
def reliable_fail(self: ReliableTask, n: int, order: dict[str, Any]) -> None:
    """celery-reliable: always fails; parked retries, dead-lettered after the 4th attempt."""
    raise _down(n)


@app.task(name="retry.plain_ok")
def plain_ok(n: int, order: dict[str, Any]) -> None:
    """Plain Celery, succeeds at once (baseline)."""


@app.task(name="retry.reliable_ok", base=ReliableTask, bind=True, retry_policy=FAIL_POLICY)
def reliable_ok(self: ReliableTask, n: int, order: dict[str, Any]) -> None:
    """ReliableTask with the same policy, succeeds at once (baseline)."""


@app.task(name="retry.plain_eta", bind=True, max_retries=1)
def plain_eta(self: Task, n: int, order: dict[str, Any]) -> None:
    """Plain Celery: fails, retried in an hour (an ETA message)."""
    try:
        raise _down(n)
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=3600) from exc


@app.task(name="retry.reliable_park", base=ReliableTask, bind=True, retry_policy=PARK_POLICY)
def reliable_park(self: ReliableTask, n: int, order: dict[str, Any]) -> None:
    """celery-reliable: fails, retry parked in the deferred set for an hour."""
    raise _down(n)


TASKS: dict[str, Task] = {t.name.split(".", 1)[1]: t for t in (plain_fail, reliable_fail, plain_ok, reliable_ok,
                                                               plain_eta, reliable_park)}
