"""Outbox relay: throughput (commit -> broker) and commit-to-publish latency, beat vs NOTIFY.

Usage (from the repository root)::

    .venv/bin/python -m bench.outbox            # full run, about 2 minutes
    .venv/bin/python -m bench.outbox --quick    # smaller, under a minute

The broker is a private ``redis-server`` (port 6393 or a free one, killed at exit); the
outbox lives in PostgreSQL database ``reliable_bench_outbox`` (created if missing,
migrated, ``reliable_outbox`` emptied before each stage). Relays are separate processes
(``python -m bench.outbox --serve MODE``) so they do not share the runner's GIL.

1. **Drain throughput.** ``drain_n`` rows are committed (500 per transaction; a third
   with one of 100 ordering keys), then 1 or 3 relay processes (``relay_outbox`` in a
   loop, batch 500) publish them. Rate = rows / (last ``published_at`` - first
   ``published_at``): the relays' own clocks, so process start-up is not counted.
2. **Latency, commit -> broker.** A writer thread commits one message per transaction
   at ``rate`` per second for ``seconds``; a reader thread ``BRPOP``s the broker queue and
   stamps each message when it arrives. Latency = arrival - the writer's clock right
   after ``COMMIT`` returned (same machine, same clock). Modes: ``beat`` (a relay run every
   1 s, what the beat entry does, without beat's own dispatch cost) and ``listen`` (an
   :class:`~celery_reliable.outbox.OutboxListener`, woken by ``NOTIFY`` at commit; its
   fallback poll is 60 s here so every publish comes from a notification).
3. **Sustained with NOTIFY.** Four writer threads commit as fast as they can (20 messages
   per transaction) for ``seconds`` with the listen-mode relay running; reported: messages
   per second that reached the broker, and the latency percentiles under that load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import infra
from .stats import pct, table

DATABASE_URL = "postgresql+psycopg://root@127.0.0.1/reliable_bench_outbox"
QUEUE = "bench-outbox"
TASK = "bench.outbox.noop"


def _noop(*args: Any) -> None:
    """The bench task (never run: only published)."""


def make_app(broker: str, database: str) -> Any:
    """The relay's Celery app: the bench task registered, no body needed."""
    from celery import Celery

    import celery_reliable

    app = Celery("bench_outbox", broker=broker, set_as_current=False)
    app.conf.update(
        reliable_redis_url=broker,
        reliable_database_url=database,
        reliable_outbox_batch=500,
        reliable_outbox_listen=True,
        reliable_outbox_poll_interval=60.0,
        reliable_check_redis=False,
        task_default_queue=QUEUE,
    )
    celery_reliable.install(app, beat=False)
    app.task(name=TASK, shared=False)(_noop)
    return app


def serve(mode: str, broker: str, database: str) -> None:
    """Run one relay process: ``loop`` (drain), ``beat`` (every 1 s) or ``listen`` (NOTIFY)."""
    from celery_reliable.outbox import OutboxListener, relay_outbox

    app = make_app(broker, database)
    if mode == "listen":
        OutboxListener(app).start()
        while True:
            time.sleep(3600)
    tick = time.monotonic()
    while True:
        stats = relay_outbox(app)
        if mode == "loop":
            if not stats["published"]:
                time.sleep(0.01)
            continue
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE reliable_outbox"))


def _relays(mode: str, count: int, broker: str, logdir: Path) -> list[Any]:
    cmd = [sys.executable, "-m", "bench.outbox", "--serve", mode, "--broker", broker]
    env = {**os.environ, "PYTHONPATH": str(infra.ROOT)}
    return [infra.spawn(cmd, logdir / f"relay-{mode}-{i}.log", env=env) for i in range(count)]


def drain(engine: Engine, broker: str, logdir: Path, n: int, relays: int) -> float:
    """Messages per second ``relays`` relay processes publish from a committed backlog of ``n``."""
    from celery_reliable.outbox import enqueue, outbox

    app = make_app(broker, DATABASE_URL)
    _truncate(engine)
    redis.Redis.from_url(broker).delete(QUEUE)
    with Session(engine) as session:
        for start in range(0, n, 500):
            with session.begin():
                for i in range(start, min(n, start + 500)):
                    key = f"k{i % 100}" if i % 3 == 0 else None
                    enqueue(session, TASK, [i], app=app, ordering_key=key, notify=False)
    procs = _relays("loop", relays, broker, logdir)
    deadline = time.monotonic() + 300
    try:
        while True:
            with engine.connect() as conn:
                left = conn.execute(select(func.count()).where(outbox.c.state == "pending")).scalar_one()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            infra.stop(p, grace=2)
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(outbox.c.published_at), func.max(outbox.c.published_at))).one()
    assert redis.Redis.from_url(broker).llen(QUEUE) >= n, "messages missing from the broker"
    return n / max((last - first).total_seconds(), 1e-6)


@dataclass
class Latency:
    """Latency figures of one mode."""

    mode: str
    sent: int
    received: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(
    engine: Engine, broker: str, logdir: Path, mode: str, rate: float, seconds: float, writers: int = 1, per_tx: int = 1
) -> Latency:
    """Commit-to-broker latency with writers at ``rate`` transactions/s each (0: as fast as they can)."""
    from celery_reliable.outbox import enqueue

    app = make_app(broker, DATABASE_URL)
    _truncate(engine)
    client = redis.Redis.from_url(broker)
    client.delete(QUEUE)
    procs = _relays(mode, 1, broker, logdir)
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    stop = threading.Event()

    def reader() -> None:
        r = redis.Redis.from_url(broker)
        while not stop.is_set() or len(arrived) < len(committed):
            got = r.brpop([QUEUE], timeout=1)
            if got is None:
                if stop.is_set():
                    return
                continue
            arrived.setdefault(json.loads(got[1])["headers"]["id"], time.time())

    def writer() -> None:
        with Session(engine) as session:
            period = 1.0 / rate if rate else 0.0
            next_at = time.monotonic()
            while not stop.is_set():
                with session.begin():
                    ids = [enqueue(session, TASK, [0], app=app, notify=mode == "listen") for _ in range(per_tx)]
                done = time.time()
                for mid in ids:
                    committed[mid] = done
                if period:
                    next_at += period
                    time.sleep(max(0.0, next_at - time.monotonic()))

    time.sleep(3.0)  # the relay process starts and (listen) LISTENs
    threads = [threading.Thread(target=reader)] + [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads[1:]:
        t.join()
    threads[0].join(15)
    for p in procs:
        infra.stop(p, grace=2)
    lat = [(arrived[m] - c) * 1000 for m, c in committed.items() if m in arrived]
    return Latency(mode, len(committed), len(arrived), len(arrived) / seconds, pct(lat, 0.5), pct(lat, 0.99), max(lat))


def main() -> None:
    """Run the stages and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", choices=("loop", "beat", "listen"))
    parser.add_argument("--broker")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.broker, DATABASE_URL)
        return
    drain_n, seconds = (5_000, 5.0) if args.quick else (30_000, 15.0)
    logdir = infra.workdir()
    _, broker = infra.private_redis(6393, logdir)
    engine = infra.prepare_database(DATABASE_URL)
    print(f"logs: {logdir}")

    rows = [[f"{k} relay(s)", drain_n, round(drain(engine, broker, logdir, drain_n, k))] for k in (1, 3)]
    print("\nDrain: messages/s from a committed backlog to the broker\n")
    print(table(["relays", "rows", "msg/s"], rows))

    results = [
        latency(engine, broker, logdir, "beat", 200, seconds),
        latency(engine, broker, logdir, "listen", 200, seconds),
        latency(engine, broker, logdir, "listen", 0, seconds, writers=4, per_tx=20),
    ]
    print("\nCommit -> broker latency (one message per transaction at 200/s; last row: 4 writers flat out)\n")
    print(
        table(
            ["relay", "sent", "received", "msg/s", "p50 ms", "p99 ms", "max ms"],
            [[r.mode, r.sent, r.received, round(r.rate), r.p50_ms, r.p99_ms, r.max_ms] for r in results],
        )
    )
    engine.dispose()
    infra.stop_all()


if __name__ == "__main__":
    main()
