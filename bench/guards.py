"""Guards per call: the circuit breaker against pybreaker, the bulkhead against one-lease references.

Usage (from the repository root)::

    .venv/bin/python -m bench.guards            # full: 11 reps x 1000 calls per block, ~2-3 min
    .venv/bin/python -m bench.guards --quick    # 3 reps x 400 calls, under a minute

What runs. **Breaker**, CLOSED, the guarded body a no-op: ours
(``celery_reliable.breaker.CircuitBreaker``, default rules) as ``with breaker:`` and
``breaker.call(fn)`` on ``redis.Redis``, ``async with breaker:`` and ``breaker.acall(fn)`` on
``redis.asyncio.Redis``; pybreaker's ``CircuitBreaker()`` in memory and with
``CircuitRedisStorage(STATE_CLOSED, client)`` (a client *without* ``decode_responses``: its
``state`` getter decodes bytes itself), ``call(fn)`` sync and ``call_async(fn)`` (tornado)
for asyncio; and the bare call for scale. **Bulkhead**, never full (size 1000):
``Bulkhead.try_acquire()`` + ``release(slot)``; a redis-py ``Lock`` acquire + release (one
lease, one name per thread); a naive ``INCR`` / ``DECR`` counter semaphore (no lease, no
owner: a dead holder keeps its slot for ever), the lower bound.

How it is measured. Timed runs on ``127.0.0.1:6379`` db 4 (flushed before each group), one
connection pool per subject, shared by the threads. Per rep every subject runs a block of
``n`` calls (``n x weight`` for the in-memory ones, so a block lasts long enough to time),
split over 1 or 4 threads (asyncio: tasks); the order of the subjects is reversed every
other rep. calls/s is the median over reps; ratios are of the medians, with the range of
the per-rep ratios (both subjects in the same rep). Client CPU is ``process_time`` around
the 1-thread / 1-task blocks. Round trips, commands sent and the server's
``INFO commandstats`` per call come from a last pass of ``count_n`` calls per subject
against a private ``redis-server`` (killed at exit), after one warm-up call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
import redis.asyncio

from . import infra
from .measure import commandstats
from .ratelimits import AsyncCountingConnection, CountingConnection, _Count, _per
from .run import _redis_rtt_us
from .stats import table

URL = "redis://127.0.0.1:6379/4"
PRIVATE_PORT = 6399
THREADS = 4
BULKHEAD_SIZE = 1000

Call = Callable[[], object]
ACall = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    n: int
    reps: int
    warmup: int
    count_n: int


FULL = Plan(n=1000, reps=11, warmup=200, count_n=300)
QUICK = Plan(n=400, reps=3, warmup=100, count_n=100)


@dataclass
class Pools:
    """The connection pools one subject may use (asyncio subjects of pybreaker need a sync one)."""

    sync: redis.ConnectionPool
    aio: redis.asyncio.ConnectionPool | None = None


@dataclass
class Subject:
    """One guard: how to build its per-call function, and what each rep measured."""

    label: str
    group: str  # "breaker" (sync), "breaker-asyncio", "bulkhead"
    make: Callable[[Pools], Any]
    weight: int = 1
    uses_redis: bool = True
    rates: dict[int, list[float]] = field(default_factory=dict)  # concurrency -> calls/s per rep
    cpu_us: list[float] = field(default_factory=list)
    counted: tuple[float, dict[str, float], dict[str, float]] | None = None


BASE, PB_MEM, PB_REDIS = "bare call (no guard)", "pybreaker, in memory", "pybreaker, CircuitRedisStorage"
LOCK, INCR = "redis-py Lock acquire + release", "INCR / DECR counter"
REFS = {"breaker": (PB_REDIS, PB_MEM), "breaker-asyncio": (PB_REDIS, PB_MEM), "bulkhead": (LOCK, INCR)}


def _noop() -> None:
    return None


async def _anoop() -> None:
    return None


class NotGranted(RuntimeError):
    """A guard refused in a run where it never should (the figures would be wrong)."""


# -- the subjects ------------------------------------------------------------------------


def _pybreaker(pools: Pools, storage: bool, name: str) -> Any:
    import pybreaker

    if not storage:
        return pybreaker.CircuitBreaker()
    client = redis.Redis(connection_pool=pools.sync)
    return pybreaker.CircuitBreaker(state_storage=pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=name))


def _ours(pools: Pools, name: str, asyncio_client: bool) -> Any:
    from celery_reliable.breaker import CircuitBreaker

    if asyncio_client:
        return CircuitBreaker(name, redis.asyncio.Redis(connection_pool=pools.aio))
    return CircuitBreaker(name, redis.Redis(connection_pool=pools.sync))


def breaker_subjects() -> list[Subject]:
    """Sync breakers and the bare call."""
    def with_block(pools: Pools) -> Call:
        breaker = _ours(pools, "bench-with", False)

        def call() -> None:
            with breaker as permit:
                if permit.bypassed:
                    raise NotGranted("CircuitBreaker let the call through without Redis")
                _noop()
        return call

    def call_method(pools: Pools) -> Call:
        breaker = _ours(pools, "bench-call", False)
        return lambda: breaker.call(_noop)

    def pb(storage: bool) -> Callable[[Pools], Call]:
        def make(pools: Pools) -> Call:
            cb = _pybreaker(pools, storage, "bench-pb-sync")
            return lambda: cb.call(_noop)
        return make

    return [
        Subject(BASE, "breaker", lambda pools: _noop, weight=100, uses_redis=False),
        Subject(PB_MEM, "breaker", pb(False), weight=20, uses_redis=False),
        Subject(PB_REDIS, "breaker", pb(True)),
        Subject("CircuitBreaker `with breaker:`", "breaker", with_block),
        Subject("CircuitBreaker `breaker.call(fn)`", "breaker", call_method),
    ]


def async_breaker_subjects() -> list[Subject]:
    """asyncio breakers (pybreaker's ``call_async`` runs on tornado, its Redis calls block the loop)."""
    def async_with(pools: Pools) -> ACall:
        breaker = _ours(pools, "bench-awith", True)

        async def call() -> None:
            async with breaker as permit:
                if permit.bypassed:
                    raise NotGranted("CircuitBreaker let the call through without Redis")
                await _anoop()
        return call

    def acall(pools: Pools) -> ACall:
        breaker = _ours(pools, "bench-acall", True)
        return lambda: breaker.acall(_anoop)

    def pb(storage: bool) -> Callable[[Pools], ACall]:
        def make(pools: Pools) -> ACall:
            cb = _pybreaker(pools, storage, "bench-pb-async")
            return lambda: cb.call_async(_anoop)
        return make

    return [
        Subject(BASE, "breaker-asyncio", lambda pools: _anoop, weight=100, uses_redis=False),
        Subject(PB_MEM, "breaker-asyncio", pb(False), weight=10, uses_redis=False),
        Subject(PB_REDIS, "breaker-asyncio", pb(True)),
        Subject("CircuitBreaker `async with breaker:`", "breaker-asyncio", async_with),
        Subject("CircuitBreaker `await breaker.acall(fn)`", "breaker-asyncio", acall),
    ]


def bulkhead_subjects() -> list[Subject]:
    """Our bulkhead pair and the two references."""
    from celery_reliable.bulkhead import Bulkhead

    def ours(pools: Pools) -> Call:
        bulkhead = Bulkhead("bench", BULKHEAD_SIZE, lease=30, client=redis.Redis(connection_pool=pools.sync))

        def pair() -> None:
            admission = bulkhead.try_acquire()
            if admission.slot is None:
                raise NotGranted(f"bulkhead full: {admission}")
            bulkhead.release(admission.slot)
        return pair

    def lock(pools: Pools) -> Call:
        client = redis.Redis(connection_pool=pools.sync)

        def pair() -> None:
            held = client.lock(f"bench-lock-{threading.get_ident()}", timeout=30)
            if not held.acquire(blocking=False):
                raise NotGranted("redis-py Lock not acquired")
            held.release()
        return pair

    def counter(pools: Pools) -> Call:
        client = redis.Redis(connection_pool=pools.sync)

        def pair() -> None:
            if client.incr("bench-sem") > BULKHEAD_SIZE:
                client.decr("bench-sem")
                raise NotGranted("counter semaphore full")
            client.decr("bench-sem")
        return pair

    return [
        Subject(INCR, "bulkhead", counter),
        Subject(LOCK, "bulkhead", lock),
        Subject("Bulkhead `try_acquire()` + `release(slot)`", "bulkhead", ours),
    ]


# -- timing ---------------------------------------------------------------------------


def sync_block(call: Call, n: int, threads: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (whole process) of ``n`` calls split over ``threads``."""
    per = n // threads
    gc.collect()
    if threads == 1:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(per):
            call()
        return time.perf_counter() - t0, time.process_time() - c0
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            for _ in range(per):
                call()
        except BaseException as exc:  # reported below: a failed block must not count
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    c0 = time.process_time()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, time.process_time() - c0


async def async_block(call: ACall, n: int, tasks: int) -> tuple[float, float]:
    """Like :func:`sync_block`, with ``tasks`` coroutines awaiting one call at a time."""
    per = n // tasks

    async def run() -> None:
        for _ in range(per):
            await call()

    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run() for _ in range(tasks)))
    return time.perf_counter() - t0, time.process_time() - c0


def _record(s: Subject, conc: int, calls: int, seconds: float, cpu: float) -> None:
    s.rates.setdefault(conc, []).append(calls / seconds)
    if conc == 1:
        s.cpu_us.append(cpu / calls * 1e6)


def run_sync(subs: list[Subject], plan: Plan) -> None:
    """Every rep, 1 and ``THREADS`` threads, on pools of their own."""
    admin = redis.Redis.from_url(URL)
    admin.flushdb()
    calls = [(s, s.make(Pools(redis.ConnectionPool.from_url(URL)))) for s in subs]
    for s, call in calls:
        sync_block(call, plan.warmup * s.weight, 1)
    for threads in (1, THREADS):
        for rep in range(plan.reps):
            for s, call in calls if rep % 2 == 0 else calls[::-1]:
                n = plan.n * s.weight // threads * threads
                _record(s, threads, n, *sync_block(call, n, threads))
        print(f"{subs[0].group} x{threads} threads done", flush=True)
    admin.flushdb()
    admin.close()


async def run_async(subs: list[Subject], plan: Plan) -> None:
    """Every rep, 1 and ``THREADS`` tasks."""
    admin = redis.Redis.from_url(URL)
    admin.flushdb()
    pools = [Pools(redis.ConnectionPool.from_url(URL), redis.asyncio.ConnectionPool.from_url(URL)) for _ in subs]
    calls = [(s, s.make(p)) for s, p in zip(subs, pools, strict=True)]
    for s, call in calls:
        await async_block(call, plan.warmup * s.weight, 1)
    for tasks in (1, THREADS):
        for rep in range(plan.reps):
            for s, call in calls if rep % 2 == 0 else calls[::-1]:
                n = plan.n * s.weight // tasks * tasks
                _record(s, tasks, n, *await async_block(call, n, tasks))
        print(f"{subs[0].group} x{tasks} tasks done", flush=True)
    for p in pools:
        assert p.aio is not None
        await p.aio.disconnect()
    admin.flushdb()
    admin.close()


# -- counting -------------------------------------------------------------------------


def count_pass(subs: list[Subject], port: int, n: int) -> None:
    """Round trips, commands sent and server calls per call, one thread / task, private server."""
    admin = redis.Redis(port=port)

    def record(s: Subject) -> None:
        server = {k: v / n for k, v in commandstats(admin).items() if v}
        s.counted = (_Count.trips / n, {k: v / n for k, v in _Count.commands.items()}, server)

    def pools() -> Pools:
        return Pools(redis.ConnectionPool(port=port, connection_class=CountingConnection),
                     redis.asyncio.ConnectionPool(port=port, connection_class=AsyncCountingConnection))

    async def count_async(s: Subject) -> None:
        call = s.make(pools())
        await call()
        admin.config_resetstat()
        _Count.reset()
        for _ in range(n):
            await call()
        record(s)

    for s in subs:
        if s.group == "breaker-asyncio":
            asyncio.run(count_async(s))
            continue
        call = s.make(pools())
        call()  # the first call may load a script
        admin.config_resetstat()
        _Count.reset()
        for _ in range(n):
            call()
        record(s)
    admin.close()


# -- report ---------------------------------------------------------------------------


def _ratio(s: Subject, ref: Subject, conc: int) -> str:
    med = statistics.median(s.rates[conc]) / statistics.median(ref.rates[conc])
    paired = [a / b for a, b in zip(s.rates[conc], ref.rates[conc], strict=True)]
    return f"**{med:.2f}** ({min(paired):.2f}-{max(paired):.2f})"


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def report(groups: dict[str, list[Subject]], meta: dict[str, str]) -> str:
    """Per group: calls/s, us per call, ratios to the two references; then the work per call."""
    out = [f"Run {meta['date']}, tree at `{meta['commit']}` (`{meta['command']}`, {meta['took']}).",
           f"Machine: {meta['machine']}. Redis PING median {meta['rtt']}.", ""]
    titles = {"breaker": "Circuit breaker, CLOSED, sync `redis.Redis`, calls/s (median of reps)",
              "breaker-asyncio": "Circuit breaker, CLOSED, asyncio, calls/s (median of reps)",
              "bulkhead": f"Bulkhead acquire + release pairs/s (size {BULKHEAD_SIZE}, never full; median of reps)"}
    for group, subs in groups.items():
        by = {s.label: s for s in subs}
        ref_a, ref_b = (by[r] for r in REFS[group])
        base = by.get(BASE)
        unit = "thread" if group != "breaker-asyncio" else "task"
        headers = ["subject"]
        for conc in (1, THREADS):
            mode = f"{conc} {unit}{'s' if conc > 1 else ''}"
            headers += [f"{mode}: /s", "us each", *([] if base is None else ["added us vs bare call"]),
                        f"vs {ref_a.label}", f"vs {ref_b.label}"]
        headers.append("client CPU us each (1)")
        rows = []
        for s in subs:
            cells: list[object] = [s.label]
            for conc in (1, THREADS):
                med = statistics.median(s.rates[conc])
                cells += [f"{med:,.0f}", f"{1e6 / med:.1f}"]
                if base is not None:
                    cells.append("-" if s is base else f"{1e6 / med - 1e6 / statistics.median(base.rates[conc]):.1f}")
                cells += ["-", "-"] if s is base else [_ratio(s, ref_a, conc), _ratio(s, ref_b, conc)]
            cells.append(f"{statistics.median(s.cpu_us):.1f}")
            rows.append(cells)
        out += [f"{titles[group]}; per-rep ratio range in brackets:", "", table(headers, rows), ""]
    rows = []
    for subs in groups.values():
        for s in subs:
            if s.counted is None:
                continue
            trips, sent, server = s.counted
            rows.append([s.label, s.group, _num(trips), _per(sent),
                         f"{_num(sum(server.values()))} ({_per(server)})"])
    out += ["Work per call / pair (exact; one thread or task, private redis-server):", "",
            table(["subject", "group", "round trips", "commands sent", "commandstats calls (incl. inside Lua)"], rows)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the guard benchmark and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.guards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 reps x 400 calls, under a minute")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        import importlib.metadata

        admin = redis.Redis.from_url(URL)
        rtt = _redis_rtt_us(admin)
        server_version = admin.info("server")["redis_version"]
        admin.close()
        groups = {"breaker": breaker_subjects(), "breaker-asyncio": async_breaker_subjects(),
                  "bulkhead": bulkhead_subjects()}
        run_sync(groups["breaker"], plan)
        asyncio.run(run_async(groups["breaker-asyncio"], plan))
        run_sync(groups["bulkhead"], plan)
        _, private = infra.private_redis(PRIVATE_PORT, infra.workdir())
        port = int(private.rsplit(":", 1)[1].split("/")[0])
        count_pass([s for subs in groups.values() for s in subs if s.uses_redis], port, plan.count_n)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=infra.ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_reliable/breaker",
                                "celery_reliable/bulkhead", "celery_reliable/lua", "celery_reliable/scripts.py"],
                               cwd=infra.ROOT, capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += "` + uncommitted changes under `celery_reliable/{breaker,bulkhead,lua}"
        version = importlib.metadata.version
        meta = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "command": ".venv/bin/python -m bench.guards" + (" --quick" if args.quick else ""),
            "took": f"{time.monotonic() - started:.0f} s, {plan.reps} reps x {plan.n} calls per block",
            "machine": f"{os.cpu_count()} cores (shared, noisy), {platform.python_implementation()} "
                       f"{platform.python_version()}, Redis {server_version}, redis-py {redis.__version__} "
                       f"(no hiredis), pybreaker {version('pybreaker')}, tornado {version('tornado')}",
            "rtt": f"{rtt:.0f} us",
        }
        print()
        print(report(groups, meta))
    finally:
        infra.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
