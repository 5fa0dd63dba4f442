"""One measured repetition: publish tasks, let one worker drain them, read the stamps.

Throughput reps publish all ``n`` tasks to a fresh queue *before* the worker consumes
it, then add the queue to the worker (remote control) and wait until every result is
stored. Tasks/s is ``n / (last date_done - first task_prerun)``, both stamped in the
worker, so publishing and polling never enter the figure. Paced reps attach the worker
first and publish at a fixed rate, for end-to-end latency (publish -> result stored).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery

META = "celery-task-meta-"


@dataclass
class Rep:
    """What one repetition measured.

    Attributes:
        kind: task kind (``plain_noop``, ``reliable_insert``, ...).
        n: tasks run.
        tasks_per_s: ``n`` over first start to last done.
        service_ms: per task, ``task_prerun`` -> ``date_done`` (stamped by Celery as it stores
            the result, after the guards' completion step); queue wait not included.
        pre_ms: per task, ``task_prerun`` -> body start (the claim, for ReliableTask).
        body_ms: per task, the body (for ``reliable_insert``: the whole ``self.transaction()``).
        post_ms: per task, body end -> ``date_done`` (completion: result record, Redis release).
        cycle_ms: per worker process, gaps between consecutive ``task_prerun`` stamps (a
            task's full cost to the worker, broker and result backend included).
        procs: worker processes that ran tasks.
        e2e_ms: per task, publish -> ``date_done`` (paced reps only).
        server_calls: ``INFO commandstats`` calls on the reliable Redis during the rep.
        counts: exact client-side counts (count reps only), summed over the rep's tasks.
    """

    kind: str
    n: int
    tasks_per_s: float
    service_ms: list[float]
    pre_ms: list[float]
    body_ms: list[float]
    post_ms: list[float]
    cycle_ms: list[float]
    procs: int
    e2e_ms: list[float] = field(default_factory=list)
    server_calls: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Target:
    """The worker a rep runs on and the clients the runner watches it with."""

    app: Celery
    node: str
    backend: redis.Redis
    reliable: redis.Redis


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (our own INFO/CONFIG left out)."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {k: v for k, v in calls.items() if k not in ("info", "config|resetstat", "config")}


def _control(target: Target, method: str, queue: str) -> None:
    replies = getattr(target.app.control, method)(queue, destination=[target.node], reply=True, timeout=10)
    if not replies:
        raise RuntimeError(f"{method}({queue}) got no reply from {target.node}")


def _wait(target: Target, ids: list[str], timeout: float) -> None:
    keys = [META + i for i in ids]
    deadline = time.monotonic() + timeout
    while True:
        done = sum(int(target.backend.exists(*keys[i:i + 1000])) for i in range(0, len(keys), 1000))
        if done >= len(keys):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{len(keys)} tasks finished in {timeout:.0f} s")
        time.sleep(0.1)


def _results(target: Target, ids: list[str]) -> list[tuple[list[float], float]]:
    out = []
    for i in range(0, len(ids), 1000):
        for raw in target.backend.mget([META + x for x in ids[i:i + 1000]]):
            if raw is None:
                raise RuntimeError("a result disappeared from the result backend")
            meta = json.loads(raw)
            if meta["status"] != "SUCCESS":
                raise RuntimeError(f"a task failed: {meta.get('result')!r}\n{meta.get('traceback')}")
            out.append((meta["result"], datetime.fromisoformat(meta["date_done"]).timestamp()))
    return out


def run_rep(target: Target, kind: str, n: int, tag: str, count: bool = False, rate: float | None = None) -> Rep:
    """Run ``n`` tasks of ``kind`` on the target worker and measure them.

    Args:
        target: the worker and clients.
        kind: a key of :data:`bench.app.TASKS`.
        n: how many tasks.
        tag: unique per rep; keys are ``k:<tag>-<i>`` so no rep replays another's.
        count: deliver through a ``-count-`` queue so the worker counts exactly.
        rate: publish at this many tasks/s with the worker already consuming (paced).
    """
    from .app import TASKS  # imported late: the app reads its settings from the environment

    task = TASKS[kind]
    queue = f"bench-{'count-' if count else ''}{target.node.split('@')[0]}-{kind}-{tag}"
    target.backend.flushdb()
    target.reliable.config_resetstat()
    ids: list[str] = []
    sent: list[float] = []
    if rate is not None:
        _control(target, "add_consumer", queue)
        # The worker joins a new queue at its next poll (up to ~1 s): wait for a probe
        # to go through so the paced tasks do not queue up behind that delay.
        _wait(target, [TASKS["plain_noop"].apply_async((f"{tag}-probe",), queue=queue).id], timeout=30)
    with target.app.producer_or_acquire() as producer:
        t0 = time.monotonic()
        for i in range(n):
            if rate is not None:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            sent.append(time.time())
            ids.append(task.apply_async((f"{tag}-{i}",), queue=queue, producer=producer).id)
    if rate is None:
        _control(target, "add_consumer", queue)
    _wait(target, ids, timeout=max(60.0, n / 20))
    _control(target, "cancel_consumer", queue)
    server_calls = commandstats(target.reliable)
    results = _results(target, ids)
    raw_counts = target.backend.hgetall(f"bench:counts:{queue}")
    counts = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw_counts.items()}
    by_pid: dict[int, list[float]] = {}
    for stamps, _ in results:
        by_pid.setdefault(int(stamps[3]), []).append(stamps[0])
    cycles = [(b - a) * 1000 for starts in by_pid.values() for a, b in itertools.pairwise(sorted(starts))]
    first = min(stamps[0] for stamps, _ in results)
    last = max(done for _, done in results)
    return Rep(
        kind=kind, n=n, tasks_per_s=n / (last - first),
        service_ms=[(done - s[0]) * 1000 for s, done in results],
        pre_ms=[(s[1] - s[0]) * 1000 for s, _ in results],
        body_ms=[(s[2] - s[1]) * 1000 for s, _ in results],
        post_ms=[(done - s[2]) * 1000 for s, done in results],
        cycle_ms=cycles, procs=len(by_pid),
        e2e_ms=[(done - t) * 1000 for t, (_, done) in zip(sent, results, strict=True)] if rate is not None else [],
        server_calls=server_calls, counts=counts,
    )
