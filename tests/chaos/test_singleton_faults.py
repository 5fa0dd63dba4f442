"""Singleton tasks under faults: a SIGKILLed holder, a SIGSTOPped holder past its lease."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from celery_reliable.runtime import runtime
from tests.harness import wait_until
from tests.worker_app import app, exclusive

LOCK_KEY = f"reliable:lock:{{{exclusive.name}}}"
TTL = 3.0


def sections(ledger) -> list[dict[str, float]]:
    return [json.loads(x) for x in ledger.lrange("sections:exclusive", 0, -1)]


def entered(ledger) -> list[tuple[str, int, int]]:
    rows = [x.decode().split(":") for x in ledger.lrange("enter:exclusive", 0, -1)]
    return [(task_id, int(pid), int(token)) for task_id, pid, token in rows]


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_sigkilled_holder_blocks_the_next_one_until_its_lease_runs_out(workers, ledger) -> None:
    env = {"TEST_LOCK_TTL": str(TTL)}
    w = workers("w1", env, concurrency=2)
    first = exclusive.delay(0, 30.0)
    wait_until(lambda: len(entered(ledger)) == 1, 20, what="the holder to start")
    _, pid, _ = entered(ledger)[0]
    client = runtime(app).redis
    time.sleep(TTL / 2)  # let the heartbeat renew the lease at least once
    pttl_ms = client.pttl(LOCK_KEY)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    assert pttl_ms > 0
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, what="the child to die")
    second = exclusive.delay(1, 0.1)
    assert second.get(timeout=60)["token"] > 0
    assert first.get(timeout=60)["token"] > 0  # redelivered (acks_late), ran after the lease too
    rows = {r["task_id"]: r for r in sections(ledger)}
    # not before: the lock outlived its holder by its remaining lease (less the time PTTL took)
    not_before = killed_at + pttl_ms / 1000.0 - 0.25
    assert rows[second.id]["start"] >= not_before, (rows[second.id]["start"] - killed_at, pttl_ms)
    assert rows[first.id]["start"] >= not_before
    # ... and not much after: it was parked until the lease ran out, then ran
    assert rows[second.id]["start"] <= killed_at + TTL + 10
    assert "WorkerLostError" in w.log() or "exited with 'signal 9" in w.log()


def test_holder_stopped_past_its_lease_learns_it_lost_the_lock(workers, ledger) -> None:
    env = {"TEST_LOCK_TTL": str(TTL)}
    w1 = workers("w1", env, concurrency=1)
    stalled = exclusive.delay(0, 2.0)
    wait_until(lambda: len(entered(ledger)) == 1, 20, what="the holder to start")
    _, pid, first_token = entered(ledger)[0]
    client = runtime(app).redis
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: state(pid) == "T", 5, what="the holder to be stopped")
        wait_until(lambda: client.exists(LOCK_KEY) == 0, TTL + 5, what="the stalled holder's lease to run out")
        workers("w2", env, concurrency=1)
        taker = exclusive.delay(1, 4.0)
        wait_until(lambda: len(entered(ledger)) == 2, 30, what="another worker to take the lock")
    finally:
        os.kill(pid, signal.SIGCONT)
    _, _, second_token = entered(ledger)[1]
    assert second_token > first_token
    assert stalled.get(timeout=30)["token"] == first_token  # it finished its body...
    # ... but its release did not free the new holder's lock
    assert client.exists(LOCK_KEY) == 1
    wait_until(lambda: "was lost while the body ran" in w1.log(), 10, what="the loss to be logged")
    assert "task-lock-lost" in w1.log()
    assert taker.get(timeout=30)["token"] == second_token
    assert client.exists(LOCK_KEY) == 0


def test_revoked_and_time_limited_bodies_give_the_lock_back_once_dead(workers, ledger) -> None:
    ttl = 20.0  # far longer than the test waits: the lock must come back by release, not expiry
    workers("w1", {"TEST_LOCK_TTL": str(ttl)}, concurrency=2)
    client = runtime(app).redis
    victim = exclusive.delay(0, 60.0)
    wait_until(lambda: len(entered(ledger)) == 1, 20, what="the first holder to start")
    _, pid, _ = entered(ledger)[0]
    app.control.revoke(victim.id, terminate=True, signal="SIGKILL")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, what="the revoked body's process to die")
    start = time.time()
    wait_until(lambda: client.exists(LOCK_KEY) == 0, 10, what="the lock of the revoked body to be released")
    assert time.time() - start < ttl / 2

    timed_out = exclusive.apply_async((1, 60.0), time_limit=2)
    wait_until(lambda: len(entered(ledger)) == 2, 20, what="the second holder to start")
    _, pid2, _ = entered(ledger)[1]
    start = time.time()
    assert exclusive.delay(2, 0.0).get(timeout=ttl / 2)["token"] > 0  # ran long before the lease would end
    assert not Path(f"/proc/{pid2}").exists() or state(pid2) == "Z"
    assert time.time() - start < ttl / 2
    assert timed_out.state == "FAILURE"
