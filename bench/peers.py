"""Publish-time dedup: celery-once's ``QueueOnce`` vs ``idempotency_on_publish=True``.

Runs in the runner process (no worker: the messages only pile up in a queue that is
deleted afterwards). Each rep publishes ``m`` distinct keys (every call publishes),
then the same ``m`` keys again (every call is a duplicate that the dedup must refuse;
plain Celery publishes them again). Both libraries keep their marks on the private
Redis, so ``INFO commandstats`` there counts exactly their commands; round trips are
counted on the client (:mod:`bench.counting`).

The two are not the same contract: celery-once holds a lock from publish until the
task *finishes* (then deletes it), while celery-reliable keeps the publish mark for the
key's TTL (a key already queued, running *or done* is refused).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import redis
from celery import Celery

from . import counting
from .measure import commandstats

PUB_QUEUE = "bench-pub"
KINDS = (("plain Celery (no dedup)", "plain_pub"), ("celery-once QueueOnce", "once_pub"),
         ("celery-reliable on_publish", "reliable_pub"))


@dataclass
class PubResult:
    """One library, one phase, medians over reps."""

    label: str
    phase: str
    ops_per_s: float
    round_trips: float
    server_calls: float
    published: float


def _phase(app: Celery, kind: str, keys: list[str], reliable: redis.Redis,
           broker: redis.Redis) -> tuple[float, float, float, int]:
    from .app import TASKS  # imported late: the app reads its settings from the environment

    task = TASKS[kind]
    reliable.config_resetstat()
    before = broker.llen(PUB_QUEUE)
    with app.producer_or_acquire() as producer:
        counting.start()
        t0 = time.perf_counter()
        for n in keys:
            task.apply_async((n,), queue=PUB_QUEUE, producer=producer)
        elapsed = time.perf_counter() - t0
        counts = counting.stop()
    calls = sum(commandstats(reliable).values())
    published = broker.llen(PUB_QUEUE) - before
    return len(keys) / elapsed, counts["redis_round_trips"] / len(keys), calls / len(keys), published


def run_peers(app: Celery, m: int, reps: int, reliable: redis.Redis, broker: redis.Redis) -> list[PubResult]:
    """Measure every kind, unique then duplicate phase, ``reps`` times; return medians."""
    samples: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
    for rep in range(reps):
        for label, kind in KINDS:
            reliable.flushall()
            broker.delete(PUB_QUEUE)
            keys = [f"r{rep}-{i}" for i in range(m)]
            for phase in ("unique", "duplicate"):
                samples.setdefault((label, phase), []).append(_phase(app, kind, keys, reliable, broker))
    broker.delete(PUB_QUEUE)
    out = []
    for (label, phase), rows in samples.items():
        out.append(PubResult(label, phase, statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
                             statistics.median(r[2] for r in rows), statistics.median(r[3] / m for r in rows)))
    return out
