"""Bulkhead slots against a real Redis (db 2): the cap under load, dead holders, renewal, owners, asyncio."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from celery_reliable.bulkhead import Bulkhead, Slot
from celery_reliable.bulkhead.bulkhead import MIN_RETRY_AFTER_MS
from celery_reliable.errors import BulkheadFull
from tests.harness import ROOT, RedisServer, wait_until

URL = "redis://127.0.0.1:6379/2"


@pytest.fixture()
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (db 2 is shared)."""
    value = f"bh-test-{uuid.uuid4().hex[:12]}"
    yield value
    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    yield r
    r.close()


# -- the cap under contention ---------------------------------------------------------------

SIZE, PROCESSES, THREADS, HOLDS = 5, 4, 4, 25


def _hammer(prefix: str, seed: int) -> None:
    """One process: THREADS threads, each holding a slot HOLDS times for a random while.

    Around each hold, the ledger records the entry and the exit atomically with a
    counter (MULTI: INCR + RPUSH), so the list replays the true number of holders.
    """
    r = redis.Redis.from_url(URL)  # after the fork: a client of this process
    bulkhead = Bulkhead("hammer", SIZE, lease=30, client=r, prefix=prefix)
    counter, ledger, denials = f"{prefix}:ledger:count", f"{prefix}:ledger:log", f"{prefix}:ledger:denials"

    def thread(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        held = 0
        while held < HOLDS:
            admission = bulkhead.try_acquire()
            if not admission:
                r.incr(denials)
                time.sleep(min(admission.retry_after, 0.01) * rng.random())
                continue
            assert admission.slot is not None
            pipe = r.pipeline(transaction=True)
            pipe.incr(counter)
            pipe.rpush(ledger, f"+{admission.slot.owner}")
            pipe.execute()
            time.sleep(rng.uniform(0, 0.01))
            pipe = r.pipeline(transaction=True)
            pipe.decr(counter)
            pipe.rpush(ledger, f"-{admission.slot.owner}")
            pipe.execute()
            assert bulkhead.release(admission.slot), "a slot was lost under a 30 s lease"
            held += 1

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r.close()


def test_cap_holds_under_processes_and_threads(client: redis.Redis, prefix: str) -> None:
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_hammer, args=(prefix, i)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    entries = client.lrange(f"{prefix}:ledger:log", 0, -1)
    log = [entry.decode() if isinstance(entry, bytes) else entry for entry in entries]
    assert len(log) == 2 * PROCESSES * THREADS * HOLDS
    holders: set[str] = set()
    most = 0
    for entry in log:
        if entry[0] == "+":
            assert entry[1:] not in holders
            holders.add(entry[1:])
        else:
            holders.remove(entry[1:])
        most = max(most, len(holders))
    assert most <= SIZE, f"{most} holders at once in a bulkhead of {SIZE}"
    # The test really contended: the cap was reached, and acquires were turned away.
    assert most == SIZE
    assert int(client.get(f"{prefix}:ledger:denials") or 0) > 0
    assert not holders and int(client.get(f"{prefix}:ledger:count") or 0) == 0
    assert Bulkhead("hammer", SIZE, client=client, prefix=prefix).in_use() == 0


# -- a SIGKILLed holder ---------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time, redis
    from celery_reliable.bulkhead import Bulkhead

    r = redis.Redis.from_url(sys.argv[1])
    with Bulkhead("solo", 1, lease=float(sys.argv[3]), client=r, prefix=sys.argv[2]) as slot:
        print("held", slot.owner, flush=True)
        time.sleep(120)
    """
)


def test_sigkilled_holders_slot_comes_back_after_its_lease_and_not_before(client: redis.Redis, prefix: str) -> None:
    lease = 2.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, URL, prefix, str(lease)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().split()
        assert line[:1] == ["held"], line
        owner = line[1]
        bulkhead = Bulkhead("solo", 1, lease=lease, client=client, prefix=prefix)
        # Alive past two leases: its heartbeat renews the slot.
        deadline = time.monotonic() + 2 * lease
        while time.monotonic() < deadline:
            assert not bulkhead.try_acquire("newcomer"), "a live, renewing holder lost its slot"
            time.sleep(0.2)
        os.killpg(holder.pid, signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()

    denied = bulkhead.try_acquire("newcomer")
    assert not denied, "the dead holder's slot came back before its lease ran out"
    assert 0 < denied.earliest_expiry <= lease
    expires_at = denied.at + denied.earliest_expiry  # server clock
    polls = 0
    while not (granted := bulkhead.try_acquire("newcomer")):
        polls += 1
        assert granted.at < expires_at + 5, "the dead holder's slot never came back"
        time.sleep(0.05)
    assert granted.at >= expires_at - 0.0005, "granted before the dead holder's lease ran out"
    assert polls > 0
    assert client.zscore(bulkhead.key, owner) is None and client.zscore(bulkhead.key, "newcomer") is not None


# -- renewal ----------------------------------------------------------------------------------


def test_renewal_keeps_a_long_holder_past_its_lease(client: redis.Redis, prefix: str) -> None:
    lease = 1.5
    bulkhead = Bulkhead("long", 1, lease=lease, client=client, prefix=prefix)
    with bulkhead as slot:
        first_expiry = client.zscore(bulkhead.key, slot.owner)
        assert first_expiry is not None
        deadline = time.monotonic() + 2.5 * lease
        while time.monotonic() < deadline:
            assert not bulkhead.try_acquire(), "another owner got the slot of a live holder"
            time.sleep(0.1)
        renewed = client.zscore(bulkhead.key, slot.owner)
        assert renewed is not None and renewed > first_expiry + lease * 1000, "the lease was not renewed"
        assert not slot.lost.is_set()
    assert not slot.lost.is_set(), "the release found the slot gone"
    assert bulkhead.in_use() == 0


def test_a_slot_found_gone_is_marked_lost(client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    bulkhead = Bulkhead("lost", 1, lease=0.6, client=client, prefix=prefix)
    with caplog.at_level(logging.WARNING, logger="celery_reliable.bulkhead"), bulkhead as slot:
        client.delete(bulkhead.key)  # as if the lease ran out while the holder was stalled
        wait_until(slot.lost.is_set, 10, interval=0.02, what="the heartbeat to notice the loss")
    assert "was lost before the block ended" in caplog.text


def test_an_expired_lease_is_not_renewed(client: redis.Redis, prefix: str) -> None:
    bulkhead = Bulkhead("expired", 2, lease=0.1, client=client, prefix=prefix)
    admission = bulkhead.try_acquire()
    assert admission.slot is not None
    # A longer lease of the same bulkhead keeps its key (the key expires with its last lease).
    assert Bulkhead("expired", 2, lease=30, client=client, prefix=prefix).try_acquire()
    time.sleep(0.3)
    assert client.zscore(bulkhead.key, admission.slot.owner) is not None  # still listed, but expired
    assert not bulkhead.renew(admission.slot) and admission.slot.lost.is_set()
    assert client.zscore(bulkhead.key, admission.slot.owner) is None  # and dropped by the renewal
    assert not bulkhead.release(admission.slot)


# -- owners ------------------------------------------------------------------------------------


def test_release_and_renew_by_a_wrong_owner_do_nothing(client: redis.Redis, prefix: str) -> None:
    bulkhead = Bulkhead("owners", 2, lease=30, client=client, prefix=prefix)
    mine = bulkhead.try_acquire("mine").slot
    assert mine is not None
    impostor = Slot("owners", "not-mine", mine.lease_ms, mine.acquired_at_ms)
    before = client.zscore(bulkhead.key, "mine")
    assert not bulkhead.release(impostor) and impostor.lost.is_set()
    assert not bulkhead.renew(impostor)
    assert bulkhead.in_use() == 1 and client.zscore(bulkhead.key, "mine") == before
    assert bulkhead.release(mine) and not mine.lost.is_set()
    assert not bulkhead.release(mine), "a second release found the slot again"
    assert bulkhead.in_use() == 0


def test_an_owner_acquiring_twice_holds_one_slot(client: redis.Redis, prefix: str) -> None:
    bulkhead = Bulkhead("twice", 2, lease=30, client=client, prefix=prefix)
    assert bulkhead.try_acquire("retried").in_use == 1
    again = bulkhead.try_acquire("retried")  # as after a reply lost on the network
    assert again and again.in_use == 1 and bulkhead.in_use() == 1
    assert bulkhead.try_acquire("other").in_use == 2


def test_retry_after_estimates_the_next_release(client: redis.Redis, prefix: str) -> None:
    bulkhead = Bulkhead("estimate", 2, lease=30, client=client, prefix=prefix)
    full = [bulkhead.try_acquire(), bulkhead.try_acquire()]
    blind = bulkhead.try_acquire()
    # No hold measured yet: a second at most, not the earliest lease's end (30 s).
    assert not blind and blind.in_use == 2 and blind.retry_after == 1.0
    assert 29 < blind.earliest_expiry <= 30
    for admission in full:
        assert admission.slot is not None and bulkhead.release(admission.slot)
    assert int(client.get(bulkhead.hold_key) or -1) >= 0  # releases keep the average hold
    for _ in range(2):
        assert bulkhead.try_acquire()
    informed = bulkhead.try_acquire()
    assert not informed
    assert MIN_RETRY_AFTER_MS / 1000 <= informed.retry_after < informed.earliest_expiry <= 30
    with pytest.raises(BulkheadFull) as caught, bulkhead:
        pass
    assert (caught.value.name, caught.value.size) == ("estimate", 2)
    assert caught.value.retry_after >= MIN_RETRY_AFTER_MS / 1000


# -- asyncio ------------------------------------------------------------------------------------


def test_async_with_holds_renews_and_refuses(prefix: str) -> None:
    async def main() -> None:
        aclient = redis.asyncio.Redis.from_url(URL)
        bulkhead = Bulkhead("async", 1, lease=0.5, client=aclient, prefix=prefix)
        try:
            async with bulkhead as slot:
                await asyncio.sleep(1.5)  # three leases: the renewal task keeps the slot
                assert await bulkhead.in_use() == 1 and not slot.lost.is_set()
                denied = await bulkhead.try_acquire()
                assert not denied and denied.in_use == 1
                with pytest.raises(BulkheadFull):
                    async with bulkhead:
                        pass
            assert not slot.lost.is_set() and await bulkhead.in_use() == 0
            admission = await bulkhead.try_acquire()
            assert admission.slot is not None
            assert await bulkhead.renew(admission.slot)
            assert await bulkhead.release(admission.slot)
            assert not await bulkhead.release(admission.slot)
        finally:
            await aclient.aclose()

    asyncio.run(main())


def test_concurrent_tasks_of_one_loop_share_one_bulkhead(prefix: str) -> None:
    async def main() -> int:
        aclient = redis.asyncio.Redis.from_url(URL)
        bulkhead = Bulkhead("tasks", 3, lease=30, client=aclient, prefix=prefix)
        running = most = 0

        async def job() -> None:
            nonlocal running, most
            while True:
                try:
                    async with bulkhead:
                        running += 1
                        most = max(most, running)
                        await asyncio.sleep(0.01)
                        running -= 1
                        return
                except BulkheadFull as full:
                    await asyncio.sleep(min(full.retry_after, 0.01))

        try:
            await asyncio.gather(*(job() for _ in range(20)))
            assert await bulkhead.in_use() == 0
        finally:
            await aclient.aclose()
        return most

    assert asyncio.run(main()) == 3


# -- round trips --------------------------------------------------------------------------------


def test_one_round_trip_per_acquire_release_and_renewal(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        r = redis.Redis(port=server.port)
        bulkhead = Bulkhead("trips", 1, client=r)
        warm = bulkhead.try_acquire()  # registers (loads) the scripts once
        assert warm.slot is not None and bulkhead.renew(warm.slot) and bulkhead.release(warm.slot)
        bulkhead.in_use()

        sent: list[str] = []
        execute = r.execute_command

        def counting(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]))
            return execute(*args, **options)

        r.execute_command = counting  # type: ignore[method-assign]

        def commands(action: object) -> int:
            """Round trips of ``action``: commands the client sent, and EVALSHAs the server ran."""
            sent.clear()
            before = int(r.info("commandstats")["cmdstat_evalsha"]["calls"])
            action()  # type: ignore[operator]
            evalshas = int(r.info("commandstats")["cmdstat_evalsha"]["calls"]) - before
            assert sent[1:-1] == ["EVALSHA"] * evalshas, sent  # between the two INFOs
            return evalshas

        held: list[Slot | None] = []
        assert commands(lambda: held.append(bulkhead.try_acquire().slot)) == 1
        assert commands(lambda: bulkhead.try_acquire()) == 1  # a denial too
        slot = held[0]
        assert slot is not None
        assert commands(lambda: bulkhead.renew(slot)) == 1
        assert commands(lambda: bulkhead.release(slot)) == 1
        assert commands(lambda: bulkhead.in_use()) == 1
        r.close()
    finally:
        server.stop()
