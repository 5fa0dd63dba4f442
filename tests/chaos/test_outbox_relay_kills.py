"""Outbox relays as real processes, SIGKILLed: nothing lost, no double effect, keys in order.

Relays are ``python -m tests.outbox_relay`` subprocesses (tests/outbox_app.py's app); the
consumer is a real ``celery worker -P solo`` of the same app, so it runs messages in the
order the broker holds them. The consumer deduplicates on the task id (inbox row and
effect in one transaction); a ledger list records every delivery, duplicates included,
which shows that the kills really made relays publish rows again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable.outbox import PENDING, PUBLISHED, enqueue
from tests.harness import WorkerProcess, wait_until
from tests.outbox_support import (
    LEDGER_URL,
    broker_messages,
    deliveries,
    drop_queue,
    effects,
    forget_run,
    new_run,
    order_violations,
    outbox_engine,
    queue_for,
    reset_outbox,
    spawn_relay,
    states,
)

TASK = "outbox_tests.consume"


@pytest.fixture()
def db() -> Iterator[Engine]:
    eng = outbox_engine()
    reset_outbox(eng)
    yield eng
    eng.dispose()


@pytest.fixture()
def run() -> Iterator[str]:
    r = new_run()
    yield r
    drop_queue(queue_for(r))
    forget_run(r)


def _consumer(run: str, tmp_path: Path) -> WorkerProcess:
    queue = queue_for(run)
    env = {"OUTBOX_QUEUE": queue, "TEST_QUEUE": queue, "OUTBOX_PREFETCH": "4"}
    return WorkerProcess(f"consumer-{run}", env, tmp_path, pool="solo", app="tests.outbox_app").wait_ready()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_relay_killed_after_publishing_before_marking_publishes_again_effect_once(
    db: Engine, run: str, tmp_path: Path
) -> None:
    queue = queue_for(run)
    with Session(db) as session, session.begin():
        ids = [enqueue(session, TASK, [run, None, i], queue=queue) for i in range(20)]
    failpoint = {"CELERY_RELIABLE_FAILPOINTS": "outbox_before_mark", "CELERY_RELIABLE_FAILPOINTS_URL": LEDGER_URL}
    crashed = spawn_relay(queue, tmp_path / "relay1.log", failpoint, "--once")
    assert crashed.wait(30) == -signal.SIGKILL
    marker = redis.Redis.from_url(LEDGER_URL)
    assert marker.get(f"failpoint:outbox_before_mark:{ids[0]}") is not None  # it died at that point
    marker.delete(f"failpoint:outbox_before_mark:{ids[0]}")
    assert [m["id"] for m in broker_messages(queue)] == ids  # published ...
    assert states(db) == {PENDING: 20}  # ... but not marked

    again = spawn_relay(queue, tmp_path / "relay2.log", None, "--once")
    assert again.wait(30) == 0
    assert states(db) == {PUBLISHED: 20}
    assert [m["id"] for m in broker_messages(queue)] == ids + ids  # published again

    worker = _consumer(run, tmp_path)
    try:
        wait_until(lambda: len(deliveries(run)) == 40, 30, what="both copies to be delivered")
    finally:
        worker.stop()
    assert Counter(d[0] for d in deliveries(run)) == dict.fromkeys(ids, 2)
    assert effects(db, run) == dict.fromkeys(ids, 1)


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(1_000, id="1k"),
        pytest.param(100_000, id="100k", marks=[pytest.mark.soak, pytest.mark.timeout(3600)]),
    ],
)
def test_three_relays_killed_now_and_then_lose_nothing_and_keep_key_order(
    db: Engine, run: str, tmp_path: Path, rows: int
) -> None:
    queue = queue_for(run)
    worker = _consumer(run, tmp_path)
    hold = {"OUTBOX_HOLD_BEFORE_COMMIT": "0.2"}  # widen the publish -> mark window the kills aim at
    relays = [spawn_relay(queue, tmp_path / f"relay{i}.log", hold) for i in range(3)]
    born = [time.monotonic()] * 3
    written = [0, 0]
    writers_done = threading.Event()
    failures: list[BaseException] = []

    def writer(n: int, count: int) -> None:
        # each writer owns its keys, so the expected order of a key is its own sequence
        rng = random.Random(n)
        keys = [f"w{n}-k{i}" for i in range(20)]
        seq = dict.fromkeys(keys, 0)
        try:
            with Session(db) as session:
                while written[n] < count:
                    with session.begin():
                        for _ in range(min(rng.randint(1, 40), count - written[n])):
                            key = rng.choice(keys) if rng.random() < 0.7 else None
                            number = seq[key] if key else written[n]
                            enqueue(session, TASK, [run, key, number], queue=queue, ordering_key=key)
                            if key:
                                seq[key] += 1
                            written[n] += 1
                    time.sleep(rng.random() * 0.002)
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)

    writers = [threading.Thread(target=writer, args=(n, rows // 2)) for n in range(2)]
    kills = 0
    rng = random.Random(7)
    started = time.monotonic()
    try:
        for t in writers:
            t.start()

        # Dense kills on the short run, so some land between publishing and marking; on the
        # soak a relay lives long enough to drain batches (they restart in about 2 s).
        pause = (0.3, 1.0) if rows <= 10_000 else (3.0, 8.0)
        deadline = max(600.0, rows / 50)
        while True:
            time.sleep(rng.uniform(*pause))
            if not writers_done.is_set() and not any(t.is_alive() for t in writers):
                writers_done.set()
                print(f"written in {time.monotonic() - started:.1f}s")
            if writers_done.is_set() and states(db) == {PUBLISHED: rows}:
                break
            grown = [i for i in range(3) if time.monotonic() - born[i] > 2.0]  # past start-up: relaying
            if not grown:
                continue
            victim = rng.choice(grown)
            _kill(relays[victim])
            kills += 1
            relays[victim] = spawn_relay(queue, tmp_path / f"relay{victim}.log", hold)
            born[victim] = time.monotonic()
            assert time.monotonic() - started < deadline, states(db)
        assert not failures, failures
        print(f"published in {time.monotonic() - started:.1f}s")
        wait_until(lambda: len(effects(db, run)) == rows, max(300.0, rows / 50), interval=0.5, what="every effect")
        time.sleep(1.0)  # any late duplicate still on its way
    finally:
        for proc in relays:
            _kill(proc)
        worker.stop()
    seen = effects(db, run)
    delivered = deliveries(run)
    duplicates = len(delivered) - rows
    print(f"{rows} rows, {kills} relay kills, {duplicates} duplicate deliveries, {time.monotonic() - started:.1f}s")
    assert kills >= 3
    assert len(seen) == rows  # none lost
    assert [m for m, n in seen.items() if n > 1] == []  # no double effect
    assert order_violations(db, run) == 0
    assert len({d[0] for d in delivered}) == rows and duplicates > 0  # the kills did cost republishing


def test_a_worker_with_listen_mode_relays_at_commit(db: Engine, run: str, tmp_path: Path) -> None:
    queue = queue_for(run)
    env = {"OUTBOX_QUEUE": queue, "TEST_QUEUE": queue, "OUTBOX_LISTEN": "1", "OUTBOX_POLL_INTERVAL": "60"}
    worker = WorkerProcess(f"listener-{run}", env, tmp_path, pool="solo", app="tests.outbox_app").wait_ready()
    try:
        time.sleep(1.0)  # the bootstep's listener connects after the worker is ready
        with Session(db) as session, session.begin():
            ids = [enqueue(session, TASK, [run, None, i], queue=queue, notify=True) for i in range(3)]
        started = time.monotonic()
        wait_until(lambda: len(effects(db, run)) == 3, 10, interval=0.02, what="the listener to relay")
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert effects(db, run) == dict.fromkeys(ids, 1)
    assert took < 5  # the fallback poll is 60 s: only the notification can have woken it
