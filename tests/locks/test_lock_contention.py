"""Mutual exclusion under contention: 4 processes x 4 threads fight over one RedisLock.

Inside the critical section each worker does a read-modify-write of a shared Redis
counter with a deliberate pause between GET and SET, and appends what it did to a ledger.
The same workload without the lock loses updates, so the test can fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness import ROOT, wait_until

DB = 14
PORT = 6379
PROCESSES = 4
THREADS = 4

WORKER = r"""
import json, os, sys, threading, time
import redis
from celery_reliable.locks import RedisLock

cfg = json.loads(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=cfg["port"], db=cfg["db"])
pid = os.getpid()
r.rpush(cfg["ready"], pid)
while (go := r.get(cfg["go"])) is None:
    time.sleep(0.005)
end = float(go)


def work(thread: int) -> None:
    lock = RedisLock(r, cfg["name"], ttl=cfg["ttl"], timeout=30) if cfg["lock"] else None
    while time.time() < end:
        token = None
        if lock is not None:
            if not lock.acquire():
                r.incr(cfg["failures"])
                continue
            token = lock.token
        enter = time.time()
        value = int(r.get(cfg["counter"]) or 0)
        time.sleep(cfg["gap"])
        r.set(cfg["counter"], value + 1)
        leave = time.time()
        r.rpush(cfg["ledger"], json.dumps([pid, thread, token, enter, leave]))
        if lock is not None:
            lost = lock.lost.is_set()
            if not lock.release() or lost:
                r.incr(cfg["failures"])


threads = [threading.Thread(target=work, args=(i,)) for i in range(cfg["threads"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.fixture()
def r() -> Iterator[redis.Redis]:
    client = redis.Redis(port=PORT, db=DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def run_workload(r: redis.Redis, tmp_path: Path, *, use_lock: bool, seconds: float) -> dict[str, Any]:
    """Run the workload in PROCESSES x THREADS; return the counter, the ledger and the failures."""
    run = uuid.uuid4().hex[:8]
    cfg = {
        "port": PORT,
        "db": DB,
        "name": f"contended:{run}",
        "ttl": 2,
        "lock": use_lock,
        "gap": 0.002,
        "threads": THREADS,
        "counter": f"counter:{run}",
        "ledger": f"ledger:{run}",
        "failures": f"failures:{run}",
        "ready": f"ready:{run}",
        "go": f"go:{run}",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i in range(PROCESSES):
            log = open(tmp_path / f"worker-{run}-{i}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, json.dumps(cfg)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_until(lambda: r.llen(cfg["ready"]) == PROCESSES, 60, what="the workers to start")
        r.set(cfg["go"], repr(time.time() + seconds))
        for i, proc in enumerate(procs):
            code = proc.wait(seconds + 60)
            assert code == 0, (tmp_path / f"worker-{run}-{i}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in logs:
            log.close()
    ledger = [json.loads(x) for x in r.lrange(cfg["ledger"], 0, -1)]
    return {
        "counter": int(r.get(cfg["counter"]) or 0),
        "ledger": ledger,
        "failures": int(r.get(cfg["failures"]) or 0),
        "pids": {int(p) for p in r.lrange(cfg["ready"], 0, -1)},
    }


def test_lock_gives_mutual_exclusion_under_contention(r: redis.Redis, tmp_path: Path) -> None:
    out = run_workload(r, tmp_path, use_lock=True, seconds=5.0)
    ledger = out["ledger"]
    sections = len(ledger)
    assert sections > 50, sections
    assert out["failures"] == 0  # every acquire succeeded, no hold was lost, every release released
    assert out["counter"] == sections  # no lost update
    # every process and thread got in (a lock with a wake-up per release does not starve them)
    assert {e[0] for e in ledger} == out["pids"]
    assert len({(e[0], e[1]) for e in ledger}) >= PROCESSES * THREADS * 3 // 4
    # the ledger is in critical-section order: intervals never overlap and tokens increase
    for prev, cur in pairwise(ledger):
        assert prev[3] <= prev[4] <= cur[3], (prev, cur)
        assert prev[2] < cur[2], (prev, cur)


def test_the_same_workload_without_the_lock_loses_updates(r: redis.Redis, tmp_path: Path) -> None:
    out = run_workload(r, tmp_path, use_lock=False, seconds=1.5)
    sections = len(out["ledger"])
    assert sections > 50, sections
    assert out["counter"] < sections  # updates were lost: the checks above can fail
    overlaps = sum(1 for a, b in pairwise(out["ledger"]) if b[3] < a[4])
    assert overlaps > 0
