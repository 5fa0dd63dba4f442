"""RedisLock against a real Redis: leases, fencing tokens, renewal, loss detection, wake-ups.

Uses database 14 of the shared server (flushed per test) and, for tests that flush the
whole server or count its commands, a private ``redis-server``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import text
from sqlalchemy.engine import Engine

from celery_reliable.errors import ConfigurationError, LockError, LockLost, LockNotAcquired
from celery_reliable.heartbeat import heartbeat
from celery_reliable.locks import RedisLock
from celery_reliable.locks.fence_store import BLOCK_US
from tests.harness import ROOT, RedisServer, wait_until

DB = 14
HOST = "127.0.0.1"
PORT = 6379


@pytest.fixture()
def r() -> Iterator[redis.Redis]:
    """Database 14 of the shared server, empty."""
    client = redis.Redis(host=HOST, port=PORT, db=DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def unique(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command on the server (INFO commandstats), without INFO itself.

    Commands run inside a script count too, so only the top-level ones a lock sends
    (EVALSHA, BLPOP, SCRIPT, EVAL) are exact.
    """
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def counting_client(port: int, db: int = 0, kind: str = "sync") -> tuple[Any, list[str]]:
    """A client whose connections log every command they send (one entry per round trip)."""
    sent: list[str] = []

    def name(arg: Any) -> str:
        return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()

    if kind == "sync":

        class Counting(redis.Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                sent.append(name(args[0]))
                super().send_command(*args, **kwargs)

        pool = redis.ConnectionPool(connection_class=Counting, host=HOST, port=port, db=db)
        return redis.Redis(connection_pool=pool), sent

    class AsyncCounting(redis.asyncio.Connection):
        async def send_command(self, *args: Any, **kwargs: Any) -> None:
            sent.append(name(args[0]))
            await super().send_command(*args, **kwargs)

    apool = redis.asyncio.ConnectionPool(connection_class=AsyncCounting, host=HOST, port=port, db=db)
    return redis.asyncio.Redis(connection_pool=apool), sent


def server_time_us(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1_000_000 + int(usec)


# -- basics -----------------------------------------------------------------------------


def test_acquire_and_release(r: redis.Redis) -> None:
    lock = RedisLock(r, "orders:1", ttl=5)
    assert lock.token is None and lock.owner is None and not lock.held()
    assert not lock.locked()
    assert lock.acquire() is True
    assert isinstance(lock.token, int) and lock.token > 0
    assert lock.held() and lock.locked()
    assert r.get(lock.key) == lock.owner.encode()  # type: ignore[union-attr]
    assert 4000 < r.pttl(lock.key) <= 5000
    assert lock.key == "reliable:lock:{orders:1}"
    assert lock.release() is True
    assert lock.token is None and lock.owner is None and not lock.held()
    assert r.exists(lock.key) == 0 and not lock.locked()
    assert not lock.lost.is_set()
    # nobody waited: the release pushed no wake-up
    assert r.exists(lock.wake_key) == 0 and lock.had_waiters is False
    with pytest.raises(LockError, match="does not hold"):
        lock.release()
    with pytest.raises(LockError, match="not held"):
        lock.check()


def test_with_statement_holds_and_releases(r: redis.Redis) -> None:
    lock = RedisLock(r, "orders:2", ttl=5)
    with lock as got:
        assert got is lock
        assert lock.held() and r.get(lock.key) == lock.owner.encode()  # type: ignore[union-attr]
        lock.check()
    assert r.exists(lock.key) == 0 and lock.owner is None
    # an exception in the body propagates and the lock is released anyway
    with pytest.raises(ZeroDivisionError), lock:
        _ = 1 / 0
    assert r.exists(lock.key) == 0 and lock.owner is None
    # a custom prefix changes the key
    other = RedisLock(r, "orders:2", prefix="app")
    with other:
        assert r.exists("app:lock:{orders:2}") == 1
        assert RedisLock(r, "orders:2", renew=False).acquire(blocking=False) is True  # different prefix, different lock


def test_non_blocking_acquire_returns_false_when_held(r: redis.Redis) -> None:
    holder = RedisLock(r, "orders:3", ttl=10)
    other = RedisLock(r, "orders:3", ttl=10)
    assert holder.acquire()
    t0 = time.monotonic()
    assert other.acquire(blocking=False) is False
    assert time.monotonic() - t0 < 1.0
    assert other.owner is None and other.token is None
    assert other.retry_after is not None and 8.0 < other.retry_after <= 10.0
    # the constructor's blocking=False is the default of acquire() and `with`
    quick = RedisLock(r, "orders:3", blocking=False)
    assert quick.acquire() is False
    with pytest.raises(LockNotAcquired) as err, quick:
        pass
    assert err.value.retry_after is not None and 8.0 < err.value.retry_after <= 10.0
    # a zero timeout tries once
    assert other.acquire(timeout=0) is False
    holder.release()
    assert other.acquire(blocking=False) is True
    other.release()


def test_with_raises_lock_not_acquired_when_the_timeout_runs_out(r: redis.Redis) -> None:
    holder = RedisLock(r, "orders:4", ttl=20)
    assert holder.acquire()
    waiter = RedisLock(r, "orders:4", timeout=0.4)
    t0 = time.monotonic()
    with pytest.raises(LockNotAcquired) as err, waiter:
        pytest.fail("entered a lock held by someone else")
    waited = time.monotonic() - t0
    assert 0.35 <= waited < 5.0
    assert err.value.name == "orders:4"
    assert err.value.retry_after is not None and 15.0 < err.value.retry_after <= 20.0
    assert "held elsewhere" in str(err.value)
    # acquire(timeout=...) overrides the constructor's
    t0 = time.monotonic()
    assert waiter.acquire(timeout=timedelta(milliseconds=200)) is False
    assert 0.15 <= time.monotonic() - t0 < 5.0
    assert r.get(holder.key) == holder.owner.encode()  # type: ignore[union-attr]
    holder.release()


def test_not_reentrant(r: redis.Redis) -> None:
    lock = RedisLock(r, "orders:5", ttl=5)
    assert lock.acquire()
    token, owner = lock.token, lock.owner
    with pytest.raises(LockError, match="not reentrant"):
        lock.acquire()
    with pytest.raises(LockError, match="not reentrant"):
        lock.acquire(blocking=False)
    with pytest.raises(LockError, match="not reentrant"), lock:
        pass
    # the failed re-entries left the hold alone
    assert lock.token == token and lock.owner == owner and lock.held()
    assert r.get(lock.key) == owner.encode()  # type: ignore[union-attr]
    assert lock.release() is True
    with lock:  # nested use of one object fails, but the outer hold survives and is released
        with pytest.raises(LockError), lock:
            pass
        assert lock.held()
    assert r.exists(lock.key) == 0


# -- fencing tokens ---------------------------------------------------------------------


def test_fencing_tokens_strictly_increase(r: redis.Redis) -> None:
    names = ["fence:a", "fence:b", "fence:🔒", "fence:{braced}"]
    shared = {n: RedisLock(r, n, ttl=5, renew=False) for n in names}
    per_name: dict[str, list[int]] = {n: [] for n in names}
    in_order: list[int] = []
    before = server_time_us(r)
    for i in range(200):
        name = names[i % len(names)]
        # alternate between one long-lived object per name and a fresh object each time
        lock = shared[name] if i % 2 else RedisLock(r, name, ttl=5, renew=False)
        assert lock.acquire(blocking=False)
        assert lock.token is not None
        per_name[name].append(lock.token)
        in_order.append(lock.token)
        assert lock.release()
    for name, tokens in per_name.items():
        assert len(tokens) == 50
        assert all(a < b for a, b in pairwise(tokens)), name
    # tokens are server time in microseconds (at least), so they also increase across names
    assert all(a < b for a, b in pairwise(in_order))
    assert in_order[0] >= before
    assert in_order[-1] <= server_time_us(r) + 1000


def test_tokens_keep_increasing_after_redis_loses_its_data(private_redis: RedisServer) -> None:
    client = redis.Redis(port=private_redis.port)
    lock = RedisLock(client, "flushed", ttl=5, renew=False)
    tokens = []
    for _ in range(5):
        assert lock.acquire()
        tokens.append(lock.token)
        assert lock.release()
    assert client.exists(lock.fence_key) == 1
    client.flushall()
    assert client.dbsize() == 0  # the fence key really is gone
    assert lock.acquire()
    assert lock.token is not None and lock.token > tokens[-1]
    lock.release()
    # a restart (empty server) also keeps them increasing
    last = lock.token if lock.token is not None else tokens[-1]
    private_redis.stop()
    private_redis.start()
    client = redis.Redis(port=private_redis.port)
    assert client.dbsize() == 0
    relock = RedisLock(client, "flushed", ttl=5, renew=False)
    assert relock.acquire()
    assert relock.token is not None and relock.token > max(tokens[-1], last)
    relock.release()
    client.close()


def _reserved(engine: Engine, name: str) -> int | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT reserved FROM reliable_fence_tokens WHERE name = :n"), {"n": name}).first()
    return None if row is None else int(row[0])


def test_fence_db_keeps_tokens_above_every_reserved_range(private_redis: RedisServer, engine: Engine) -> None:
    client = redis.Redis(port=private_redis.port)
    name = unique("fence-db")
    lock = RedisLock(client, name, ttl=5, renew=False, fence_db=engine)
    try:
        tokens = []
        reserved_seen = []
        for _ in range(5):
            assert lock.acquire()
            assert lock.token is not None
            tokens.append(lock.token)
            reserved = _reserved(engine, name)
            assert reserved is not None and lock.token <= reserved  # every token lies inside a reserved range
            reserved_seen.append(reserved)
            assert lock.release()
        assert all(a < b for a, b in pairwise(tokens))
        # tokens are reserved in ranges: one upsert covered all five acquisitions
        assert len(set(reserved_seen)) == 1
        assert reserved_seen[0] - tokens[0] <= BLOCK_US

        # Simulate Redis losing its data while its clock went back: the database holds a
        # reservation far beyond anything the server's TIME will produce.
        seeded = server_time_us(client) + 10**12
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE reliable_fence_tokens SET reserved = :v WHERE name = :n"), {"v": seeded, "n": name}
            )
        client.flushall()
        assert client.dbsize() == 0

        # Control: without the database, Redis alone hands out a token below that floor.
        plain = RedisLock(client, name, ttl=5, renew=False)
        assert plain.acquire()
        assert plain.token is not None and plain.token < seeded
        assert plain.release()
        client.flushall()

        assert lock.acquire()
        assert lock.token is not None and lock.token > seeded  # the database floor was used
        first_after = lock.token
        assert lock.release()
        assert lock.acquire()
        second_after = lock.token
        assert second_after is not None and second_after > first_after
        assert lock.release()
        reserved = _reserved(engine, name)
        assert reserved is not None and reserved >= second_after > seeded
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM reliable_fence_tokens WHERE name = :n"), {"n": name})
        client.close()
    assert _reserved(engine, name) is None


# -- expiry, renewal, loss --------------------------------------------------------------


def test_release_after_expiry_never_frees_the_new_owners_lock(r: redis.Redis) -> None:
    first = RedisLock(r, "expiring", ttl=0.2, renew=False)
    second = RedisLock(r, "expiring", ttl=10, renew=False)
    assert first.acquire()
    first_token = first.token
    wait_until(lambda: r.exists(first.key) == 0, 5, interval=0.02, what="the first lease to expire")
    assert second.acquire(blocking=False)
    assert second.token is not None and first_token is not None and second.token > first_token
    assert first.release() is False
    assert first.lost.is_set()
    assert first.owner is None and first.token is None
    # the second holder still holds, with its full lease
    assert r.get(second.key) == second.owner.encode()  # type: ignore[union-attr]
    assert r.pttl(second.key) > 8000
    assert RedisLock(r, "expiring").acquire(blocking=False) is False
    assert second.release() is True


def test_exit_after_expiry_raises_lock_lost(r: redis.Redis) -> None:
    lock = RedisLock(r, "expiring:with", ttl=0.15, renew=False)
    with pytest.raises(LockLost, match="ran out"), lock:
        wait_until(lambda: r.exists(lock.key) == 0, 5, interval=0.02, what="the lease to expire")
        assert RedisLock(r, "expiring:with", ttl=10, renew=False).acquire(blocking=False)  # someone else gets in
    assert lock.lost.is_set()
    # an exception of the body wins over the loss
    lock2 = RedisLock(r, "expiring:with2", ttl=0.15, renew=False)
    with pytest.raises(KeyError), lock2:
        wait_until(lambda: r.exists(lock2.key) == 0, 5, interval=0.02, what="the lease to expire")
        raise KeyError("body")
    assert lock2.lost.is_set()


def test_heartbeat_keeps_the_lock_for_ten_times_its_ttl(r: redis.Redis) -> None:
    lock = RedisLock(r, "renewed", ttl=0.3)
    other = RedisLock(r, "renewed", ttl=0.3)
    assert lock.acquire()
    owner = lock.owner
    pttls = []
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        pttls.append(r.pttl(lock.key))
        assert r.get(lock.key) == owner.encode()  # type: ignore[union-attr]
        assert other.acquire(blocking=False) is False
        time.sleep(0.03)
    assert min(pttls) > 0, pttls
    assert len(pttls) > 30
    assert not lock.lost.is_set()
    lock.check()
    assert lock.release() is True


@pytest.mark.parametrize("fault", ["deleted", "taken-over"])
def test_lost_lease_is_detected_while_held(r: redis.Redis, fault: str) -> None:
    ttl = 2.4
    lock = RedisLock(r, f"stall:{fault}", ttl=ttl)
    with pytest.raises(LockLost), lock:
        time.sleep(0.1)
        if fault == "deleted":
            assert r.delete(lock.key) == 1
        else:
            assert r.set(lock.key, "intruder", xx=True)
        t0 = time.monotonic()
        assert lock.lost.wait(ttl), "the heartbeat never noticed the lost lease"
        detected = time.monotonic() - t0
        # detected at the next renewal (every ttl/3), long before the lease would have run out
        assert detected < ttl / 3 + 0.8, detected
        assert not lock.held()
        with pytest.raises(LockLost, match="lost while held"):
            lock.check()
        with pytest.raises(LockLost):
            lock.extend()
    # __exit__ raised LockLost; the intruder's key was left alone
    if fault == "taken-over":
        assert r.get(lock.key) == b"intruder"
    else:
        assert r.exists(lock.key) == 0


def test_extend(r: redis.Redis) -> None:
    lock = RedisLock(r, "extended", ttl=1, renew=False)
    assert lock.acquire()
    lock.extend(30)
    assert 29_000 < r.pttl(lock.key) <= 30_000
    lock.extend()
    assert 0 < r.pttl(lock.key) <= 1000
    with pytest.raises(ConfigurationError) as err:
        lock.extend(-1)
    assert err.value.name == "ttl"
    r.delete(lock.key)  # the lease is gone: extend must notice itself (no heartbeat ran)
    assert not lock.lost.is_set()
    with pytest.raises(LockLost, match="could not extend"):
        lock.extend()
    assert lock.lost.is_set()
    assert r.exists(lock.key) == 0  # extend did not recreate it
    assert lock.release() is False


def test_stale_renewal_does_not_mark_the_next_hold_lost(r: redis.Redis) -> None:
    """A renewal the heartbeat thread already took from its registry may run after the release.

    It must not report a loss: ``lost`` is shared by every hold of the object, so a stale
    renewal would otherwise mark the next hold lost (or a cleanly released lock lost).
    """
    lock = RedisLock(r, "stale-renewal", ttl=30)
    assert lock.acquire()
    stale = lock._lease
    assert stale is not None
    assert lock.release() is True
    # what the heartbeat thread does with a lease it copied before the release
    if not stale.renew():
        stale.lost.set()
    assert not lock.lost.is_set()
    assert lock.acquire()
    if not stale.renew():
        stale.lost.set()
    assert not lock.lost.is_set() and lock.held()
    lock.check()
    assert r.get(lock.key) == lock.owner.encode()  # type: ignore[union-attr]
    assert lock.release() is True


CHILD = r"""
import json, os, sys
import redis
from celery_reliable.errors import LockLost
from celery_reliable.locks import RedisLock

port, db, name, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = redis.Redis(host="127.0.0.1", port=port, db=db)
lock = RedisLock(r, name, ttl=1)
assert lock.acquire(blocking=False)
r.rpush(out, json.dumps({"event": "acquired", "token": lock.token, "pid": os.getpid()}))
lost = lock.lost.wait(30)
try:
    lock.check()
    check = "ok"
except LockLost:
    check = "LockLost"
released = lock.release()
r.rpush(out, json.dumps({"event": "done", "lost": lost, "check": check, "released": released}))
"""


def _proc_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_stopped_holder_loses_the_lock_and_finds_out(r: redis.Redis, tmp_path: Path) -> None:
    name = "stalled-child"
    out = "stalled-child:events"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(PORT), str(DB), name, out],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        got = r.blpop([out], timeout=60)
        assert got is not None, (tmp_path / "child.log").read_text()
        acquired = json.loads(got[1])
        assert acquired["event"] == "acquired" and acquired["pid"] == child.pid
        time.sleep(0.5)  # let the child's heartbeat renew at least once

        os.kill(child.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: _proc_state(child.pid) == "T", 5, interval=0.01, what="the child to stop")

        mine = RedisLock(r, name, ttl=30, timeout=10)
        assert mine.acquire()  # possible only once the stopped child's lease ran out
        assert time.monotonic() - stopped_at < 3.0
        assert mine.token is not None and mine.token > acquired["token"]
        assert _proc_state(child.pid) == "T"  # the child really was stopped all along
        time.sleep(max(0.0, 2.0 - (time.monotonic() - stopped_at)))
        assert _proc_state(child.pid) == "T"
        os.kill(child.pid, signal.SIGCONT)

        got = r.blpop([out], timeout=20)
        assert got is not None, (tmp_path / "child.log").read_text()
        done = json.loads(got[1])
        assert done == {"event": "done", "lost": True, "check": "LockLost", "released": False}
        assert child.wait(20) == 0
        # the child's release did not free our lock
        assert r.get(mine.key) == mine.owner.encode()  # type: ignore[union-attr]
        assert mine.release() is True
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)


# -- waiting ----------------------------------------------------------------------------


def test_blocking_acquire_wakes_on_release_without_polling(private_redis: RedisServer) -> None:
    holder_client = redis.Redis(port=private_redis.port)
    waiter_client, sent = counting_client(private_redis.port)
    name = "wake-me"
    holder = RedisLock(holder_client, name, ttl=30)
    waiter = RedisLock(waiter_client, name, ttl=30, timeout=10)
    # warm up: scripts loaded, connections open, so the counts below are the lock's own
    assert waiter.acquire(blocking=False) and waiter.release()
    holder_client.delete(waiter.wake_key)
    assert holder.acquire()
    holder_token = holder.token
    assert holder_token is not None
    before = command_calls(holder_client)
    sent.clear()
    result: dict[str, Any] = {}

    def wait() -> None:
        t0 = time.monotonic()
        result["ok"] = waiter.acquire()
        result["at"] = time.monotonic()
        result["waited"] = result["at"] - t0

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    assert "ok" not in result  # still waiting
    released_at = time.monotonic()
    assert holder.release() is True
    thread.join(15)
    assert not thread.is_alive()
    after = command_calls(holder_client)
    assert result["ok"] is True
    assert result["waited"] < 2.0  # woken by the release, not by the 30 s lease running out
    assert result["at"] - released_at < 1.5
    assert waiter.retry_after is None  # cleared once held; the BLPOP below shows it found the lease in its way
    assert waiter.token is not None and waiter.token > holder_token
    # the waiter: one EVALSHA (busy), one BLPOP (woken by the release), one EVALSHA (granted)
    assert sent == ["EVALSHA", "BLPOP", "EVALSHA"]
    # and the server agrees (plus the holder's release)
    used = delta(before, after)
    assert used.get("evalsha") == 3 and used.get("blpop") == 1, used
    assert "eval" not in used and "script|load" not in used
    assert waiter.release() is True


def test_waiter_gets_the_lock_when_the_holder_expires(r: redis.Redis) -> None:
    holder = RedisLock(r, "expire-wake", ttl=0.5, renew=False)
    assert holder.acquire()
    waiter = RedisLock(r, "expire-wake", ttl=5, timeout=10)
    t0 = time.monotonic()
    assert waiter.acquire()  # no release ever comes: the wait ends at the holder's expiry
    assert time.monotonic() - t0 < 3.0
    assert holder.release() is False
    assert waiter.release() is True


# -- asyncio ----------------------------------------------------------------------------


def _async_client() -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host=HOST, port=PORT, db=DB)


def test_async_quick_start(r: redis.Redis) -> None:
    async def main() -> None:
        client = _async_client()
        try:
            async with RedisLock(client, "payment:order-123") as lock:
                assert lock.token is not None and lock.token > 0
                assert await lock.alocked()
                assert r.get("reliable:lock:{payment:order-123}") == lock.owner.encode()  # type: ignore[union-attr]
                assert 29_000 < r.pttl(lock.key) <= 30_000
                other = RedisLock(client, "payment:order-123")
                assert await other.aacquire(blocking=False) is False
                assert other.retry_after is not None and other.retry_after > 25
                first = lock.token
            assert lock.token is None
            assert not await lock.alocked()
            async with RedisLock(client, "payment:order-123") as again:
                assert again.token is not None and again.token > first
        finally:
            await client.aclose()

    asyncio.run(main())


def test_async_acquire_release_extend(r: redis.Redis) -> None:
    async def main() -> None:
        client = _async_client()
        try:
            lock = RedisLock(client, "async:ops", ttl=5, renew=False)
            assert await lock.aacquire(blocking=False) is True
            with pytest.raises(LockError, match="not reentrant"):
                await lock.aacquire()
            await lock.aextend(20)
            assert 19_000 < r.pttl(lock.key) <= 20_000
            await lock.aextend()
            assert 0 < r.pttl(lock.key) <= 5000
            other = RedisLock(client, "async:ops", timeout=0.2)
            t0 = time.monotonic()
            with pytest.raises(LockNotAcquired) as err:
                async with other:
                    pytest.fail("entered a held lock")
            assert 0.15 <= time.monotonic() - t0 < 5
            assert err.value.retry_after is not None and err.value.retry_after > 3
            assert await lock.arelease() is True
            assert r.exists(lock.key) == 0
            with pytest.raises(LockError):
                await lock.arelease()
            # lost while held: aextend notices, arelease reports it, __aexit__ raises
            assert await lock.aacquire()
            r.delete(lock.key)
            with pytest.raises(LockLost):
                await lock.aextend()
            assert lock.lost.is_set()
            assert await lock.arelease() is False
            with pytest.raises(LockLost):
                async with lock:
                    r.set(lock.key, "intruder")
            assert r.get(lock.key) == b"intruder"
        finally:
            await client.aclose()

    asyncio.run(main())


def test_async_heartbeat_keeps_the_lock_and_detects_loss(r: redis.Redis) -> None:
    async def main() -> None:
        client = _async_client()
        try:
            lock = RedisLock(client, "async:renewed", ttl=0.5)
            other = RedisLock(client, "async:renewed")
            async with lock:
                pttls = []
                end = time.monotonic() + 1.5  # three leases
                while time.monotonic() < end:
                    pttls.append(r.pttl(lock.key))
                    assert await other.aacquire(blocking=False) is False
                    await asyncio.sleep(0.03)
                assert min(pttls) > 0, pttls
                assert not lock.lost.is_set()
                lock.check()
            assert r.exists(lock.key) == 0

            lock = RedisLock(client, "async:lost", ttl=0.9)
            with pytest.raises(LockLost):
                async with lock:
                    r.delete(lock.key)
                    t0 = time.monotonic()
                    while not lock.lost.is_set() and time.monotonic() - t0 < 5:
                        await asyncio.sleep(0.01)
                    assert lock.lost.is_set()
                    assert time.monotonic() - t0 < 0.3 + 0.8
                    with pytest.raises(LockLost):
                        lock.check()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_async_waiter_wakes_on_release(r: redis.Redis) -> None:
    async def main() -> None:
        client = _async_client()
        try:
            holder = RedisLock(client, "async:wake", ttl=30)
            waiter = RedisLock(client, "async:wake", ttl=30, timeout=10)
            assert await holder.aacquire()

            async def release_later() -> None:
                await asyncio.sleep(0.3)
                assert await holder.arelease()

            t0 = time.monotonic()
            task = asyncio.create_task(release_later())
            assert await waiter.aacquire()
            assert time.monotonic() - t0 < 2.0
            await task
            assert waiter.retry_after is None  # cleared once held
            assert await waiter.arelease()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_wrong_client_kind_is_a_configuration_error(r: redis.Redis) -> None:
    sync_lock = RedisLock(r, "kind")
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis") as err:
        asyncio.run(sync_lock.aacquire())
    assert err.value.name == "client"

    async def enter_sync_with_async() -> None:
        async with sync_lock:
            pass

    with pytest.raises(ConfigurationError, match="async with / aacquire"):
        asyncio.run(enter_sync_with_async())

    async def use_async_with_sync_statement() -> None:
        client = _async_client()
        try:
            lock = RedisLock(client, "kind")
            with pytest.raises(ConfigurationError, match="use async with") as err, lock:
                pass
            assert err.value.name == "client"
            with pytest.raises(ConfigurationError, match=r"redis\.Redis client"):
                lock.acquire()
        finally:
            await client.aclose()

    asyncio.run(use_async_with_sync_statement())
    assert r.keys("*") == []  # nothing was acquired by mistake


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"client": None}, "client"),
        ({"client": object()}, "client"),
        ({"client": "redis://127.0.0.1"}, "client"),
        ({"name": None}, "name"),
        ({"name": b"bytes"}, "name"),
        ({"name": 42}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "x" * 1025}, "name"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": timedelta(seconds=-1)}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"ttl": "30"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 10**6}, "ttl"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": -0.001}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": "5"}, "timeout"),
    ],
)
def test_constructor_rejects_bad_input(r: redis.Redis, kwargs: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"client": r, "name": "bad-input", **kwargs}
    client, name = args.pop("client"), args.pop("name")
    with pytest.raises(ConfigurationError) as err:
        RedisLock(client, name, **args)
    assert err.value.name == param
    assert str(err.value).startswith(f"{param}: ")
    assert r.keys("*") == []


def test_acquire_rejects_a_negative_timeout(r: redis.Redis) -> None:
    lock = RedisLock(r, "bad-timeout")
    with pytest.raises(ConfigurationError) as err:
        lock.acquire(timeout=-1)
    assert err.value.name == "timeout"
    assert lock.owner is None and r.exists(lock.key) == 0


# -- round trips ------------------------------------------------------------------------


def test_uncontended_pair_costs_two_commands(private_redis: RedisServer) -> None:
    client, sent = counting_client(private_redis.port)
    lock = RedisLock(client, "round-trips", ttl=30)
    assert lock.acquire() and lock.release()  # loads the scripts and opens the connection
    for _ in range(3):
        before = command_calls(client)
        sent.clear()
        assert lock.acquire()
        lease = lock._lease
        assert lease is not None and lease in heartbeat()._leases.values()  # registered ...
        assert lease.next_at > time.monotonic() + 5  # ... but not due
        assert lock.release()
        assert sent == ["EVALSHA", "EVALSHA"]
        used = delta(before, command_calls(client))
        assert used.get("evalsha") == 2 and "eval" not in used and "script|load" not in used, used
    assert lease not in heartbeat()._leases.values()
    client.close()


def test_async_uncontended_pair_costs_two_commands(private_redis: RedisServer) -> None:
    sync = redis.Redis(port=private_redis.port)

    async def main() -> list[tuple[list[str], int]]:
        client, sent = counting_client(private_redis.port, kind="async")
        lock = RedisLock(client, "round-trips", ttl=30)
        seen = []
        try:
            async with lock:
                pass
            for _ in range(3):
                before = command_calls(sync)
                sent.clear()
                async with lock:
                    assert lock._renewer is not None and not lock._renewer.done()
                seen.append((list(sent), delta(before, command_calls(sync)).get("evalsha", 0)))
        finally:
            await client.aclose()
        return seen

    assert asyncio.run(main()) == [(["EVALSHA", "EVALSHA"], 2)] * 3
    sync.close()
