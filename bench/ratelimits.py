"""Rate-limit decisions per second: celery-reliable's limiters against the ``limits`` library.

Usage (from the repository root)::

    .venv/bin/python -m bench.ratelimits            # full: 11 reps x 1000 decisions per block, ~2.5 min
    .venv/bin/python -m bench.ratelimits --quick    # 3 reps x 600 decisions, under a minute

What runs. Ours: ``GCRALimiter``, ``TokenBucketLimiter``, ``SlidingWindowLimiter`` exact (a
log) and counter (``exact=False``), each ``is_allowed(key)``. ``limits``:
``MovingWindowRateLimiter``, ``SlidingWindowCounterRateLimiter`` and
``FixedWindowRateLimiter`` over ``limits.storage.RedisStorage`` (``limits.aio`` with
``implementation="redispy"`` for asyncio), each ``hit(item, key)``. The pairs compared:
exact sliding window vs moving window (both exact), sliding counter vs sliding window
counter, GCRA and token bucket (one key, O(1)) vs fixed window (one key, O(1)).
``limits`` answers a bool; ours a :class:`~celery_reliable.ratelimit.Decision` (remaining,
reset, retry-after, server time). ``limits``' moving window stamps requests with the
client's clock; ours decide on the Redis server's clock.

Two workloads, the same key strings for every subject: **admitted** (100 keys taken in
turn, ``1000/s`` per key: every decision admits, the hot path) and **flood** (one key,
``10/s``: nearly every decision is denied). Four modes: sync client in 1 and 4 threads
(one client shared by the threads), ``redis.asyncio`` / ``limits.aio`` with 1 and 4
concurrent tasks. Timed runs use ``127.0.0.1:6379`` db 4 (flushed before each workload).

How it is measured.

* decisions/s: per rep, each subject runs a block of ``n`` decisions (split over the
  threads or tasks) timed with ``perf_counter``; the order of the subjects is reversed
  every other rep; medians over reps, and the ratio of ours to its ``limits`` peer (ratio of
  the medians), with the median and range of the per-rep ratios (ours and its peer in the
  same rep, a few hundred ms apart: "paired", steadier on a noisy machine). Client CPU per decision is
  ``time.process_time()`` around the 1-thread / 1-task blocks.
* Round trips and commands per decision, exact: a last pass of ``count_n`` decisions per
  subject against a private ``redis-server`` (killed at exit), through connection classes
  that count every request written (one ``send_packed_command`` = one round trip) and
  every command by name, after one warm-up call (which may load the script). ``INFO
  commandstats`` of that private server gives the server's calls, commands run inside
  Lua included.
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
import redis.asyncio

from . import infra
from .measure import commandstats
from .run import _redis_rtt_us
from .stats import table

URL = "redis://127.0.0.1:6379/4"
PRIVATE_PORT = 6398
THREADS = 4
KEYS = [f"user:{i}" for i in range(100)]

Decide = Callable[[str], object]
ADecide = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    n: int
    reps: int
    warmup: int
    count_n: int


FULL = Plan(n=1000, reps=11, warmup=200, count_n=300)
QUICK = Plan(n=600, reps=3, warmup=100, count_n=100)


@dataclass(frozen=True)
class Workload:
    """Which keys are decided on, and the limit per key."""

    name: str
    keys: list[str]
    rate: int  # requests per second per key (and burst / capacity)


WORKLOADS = (Workload("admitted", KEYS, 1000), Workload("flood", ["user:flood"], 10))
MODES = (("sync", 1), ("sync", THREADS), ("asyncio", 1), ("asyncio", THREADS))


@dataclass(frozen=True)
class Subject:
    """One limiter: how to build its decide function on a sync or asyncio connection pool."""

    label: str
    ours: bool
    peer: str  # label of the subject it is compared with ("" for the peers themselves)
    make: Callable[[Any, Workload], Decide]
    amake: Callable[[Any, Workload], ADecide]


# -- the subjects ------------------------------------------------------------------------


def _ours(kind: str) -> tuple[Callable[[Any, Workload], Decide], Callable[[Any, Workload], ADecide]]:
    from celery_reliable.ratelimit import GCRALimiter, RateLimiter, SlidingWindowLimiter, TokenBucketLimiter

    def build(client: Any, w: Workload) -> RateLimiter[Any]:
        name = f"bench-{kind}-{w.name}"
        if kind == "gcra":
            return GCRALimiter(client, w.rate, 1.0, name=name)
        if kind == "token_bucket":
            return TokenBucketLimiter(client, capacity=w.rate, refill_rate=w.rate, name=name)
        return SlidingWindowLimiter(client, w.rate, 1.0, exact=kind == "sliding_log", name=name)

    def make(pool: redis.ConnectionPool, w: Workload) -> Decide:
        return build(redis.Redis(connection_pool=pool), w).is_allowed

    def amake(pool: redis.asyncio.ConnectionPool, w: Workload) -> ADecide:
        return build(redis.asyncio.Redis(connection_pool=pool), w).is_allowed

    return make, amake


def _uri(pool: redis.ConnectionPool | redis.asyncio.ConnectionPool) -> str:
    """The URL of the server ``pool`` connects to (``limits`` parses one even when given a pool)."""
    kw = pool.connection_kwargs
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _limits(kind: str) -> tuple[Callable[[Any, Workload], Decide], Callable[[Any, Workload], ADecide]]:
    import limits.aio.storage
    import limits.aio.strategies
    import limits.storage
    import limits.strategies
    from limits import RateLimitItemPerSecond

    sync_cls: type[Any] = {"moving": limits.strategies.MovingWindowRateLimiter,
                "counter": limits.strategies.SlidingWindowCounterRateLimiter,
                "fixed": limits.strategies.FixedWindowRateLimiter}[kind]
    async_cls: type[Any] = {"moving": limits.aio.strategies.MovingWindowRateLimiter,
                 "counter": limits.aio.strategies.SlidingWindowCounterRateLimiter,
                 "fixed": limits.aio.strategies.FixedWindowRateLimiter}[kind]

    def make(pool: redis.ConnectionPool, w: Workload) -> Decide:
        storage = limits.storage.RedisStorage(_uri(pool), connection_pool=pool)
        strategy = sync_cls(storage)
        item = RateLimitItemPerSecond(w.rate, 1, namespace=f"bench-{kind}-{w.name}")
        return lambda key: strategy.hit(item, key)

    def amake(pool: redis.asyncio.ConnectionPool, w: Workload) -> ADecide:
        options: dict[str, Any] = {"connection_pool": pool}  # typed as str | float | bool by limits
        storage = limits.aio.storage.RedisStorage("async+" + _uri(pool), implementation="redispy", **options)
        strategy = async_cls(storage)
        item = RateLimitItemPerSecond(w.rate, 1, namespace=f"bench-{kind}-{w.name}")
        return lambda key: strategy.hit(item, key)

    return make, amake


MOVING, COUNTER, FIXED = "limits MovingWindow", "limits SlidingWindowCounter", "limits FixedWindow"


def subjects() -> list[Subject]:
    """Ours and the ``limits`` strategies, each ours naming the peer it is compared with."""
    return [
        Subject("SlidingWindowLimiter exact", True, MOVING, *_ours("sliding_log")),
        Subject(MOVING, False, "", *_limits("moving")),
        Subject("SlidingWindowLimiter counter", True, COUNTER, *_ours("sliding_counter")),
        Subject(COUNTER, False, "", *_limits("counter")),
        Subject("GCRALimiter", True, FIXED, *_ours("gcra")),
        Subject("TokenBucketLimiter", True, FIXED, *_ours("token_bucket")),
        Subject(FIXED, False, "", *_limits("fixed")),
    ]


# -- timing ---------------------------------------------------------------------------


@dataclass
class Series:
    """One subject in one mode and workload: what each rep measured."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    admitted: list[float] = field(default_factory=list)


def _admits(answer: object) -> bool:
    return bool(answer)


def sync_block(decide: Decide, keys: list[str], n: int, threads: int) -> tuple[float, float, float]:
    """Seconds, CPU seconds (whole process) and fraction admitted for ``n`` decisions over ``threads``."""
    per = n // threads
    admitted = [0] * threads
    gc.collect()
    if threads == 1:
        c0, t0 = time.process_time(), time.perf_counter()
        count = 0
        for i in range(per):
            if decide(keys[i % len(keys)]):
                count += 1
        admitted[0] = count
        return time.perf_counter() - t0, time.process_time() - c0, count / per
    barrier = threading.Barrier(threads + 1)

    def run(t: int) -> None:
        barrier.wait()
        count = 0
        for i in range(per):
            if decide(keys[(i + t) % len(keys)]):
                count += 1
        admitted[t] = count

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    c0 = time.process_time()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - t0, time.process_time() - c0, sum(admitted) / (per * threads)


async def async_block(decide: ADecide, keys: list[str], n: int, tasks: int) -> tuple[float, float, float]:
    """Like :func:`sync_block`, with ``tasks`` coroutines awaiting one decision at a time."""
    per = n // tasks

    async def run(t: int) -> int:
        count = 0
        for i in range(per):
            if await decide(keys[(i + t) % len(keys)]):
                count += 1
        return count

    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    counts = await asyncio.gather(*(run(t) for t in range(tasks)))
    return time.perf_counter() - t0, time.process_time() - c0, sum(counts) / (per * tasks)


Results = dict[tuple[str, int, str, str], Series]  # (api, concurrency, workload, label)


def run_sync(subs: list[Subject], plan: Plan, results: Results) -> None:
    """Every workload, 1 and ``THREADS`` threads, sync clients (one pool per subject)."""
    admin = redis.Redis.from_url(URL)
    for w in WORKLOADS:
        admin.flushdb()
        decides = [(s, s.make(redis.ConnectionPool.from_url(URL), w)) for s in subs]
        for _, decide in decides:
            sync_block(decide, w.keys, plan.warmup, 1)
        for threads in (1, THREADS):
            for rep in range(plan.reps):
                for s, decide in decides if rep % 2 == 0 else decides[::-1]:
                    seconds, cpu, admitted = sync_block(decide, w.keys, plan.n, threads)
                    series = results.setdefault(("sync", threads, w.name, s.label), Series())
                    series.rates.append(plan.n // threads * threads / seconds)
                    series.cpu_us.append(cpu / plan.n * 1e6)
                    series.admitted.append(admitted)
            print(f"sync {w.name} x{threads} done", flush=True)
    admin.flushdb()
    admin.close()


async def run_async(subs: list[Subject], plan: Plan, results: Results) -> None:
    """Every workload, 1 and ``THREADS`` concurrent tasks, asyncio clients."""
    admin = redis.Redis.from_url(URL)
    for w in WORKLOADS:
        admin.flushdb()
        pools = [redis.asyncio.ConnectionPool.from_url(URL) for _ in subs]
        decides = [(s, s.amake(pool, w)) for s, pool in zip(subs, pools, strict=True)]
        for _, decide in decides:
            await async_block(decide, w.keys, plan.warmup, 1)
        for tasks in (1, THREADS):
            for rep in range(plan.reps):
                for s, decide in decides if rep % 2 == 0 else decides[::-1]:
                    seconds, cpu, admitted = await async_block(decide, w.keys, plan.n, tasks)
                    series = results.setdefault(("asyncio", tasks, w.name, s.label), Series())
                    series.rates.append(plan.n // tasks * tasks / seconds)
                    series.cpu_us.append(cpu / plan.n * 1e6)
                    series.admitted.append(admitted)
            print(f"asyncio {w.name} x{tasks} done", flush=True)
        for pool in pools:
            await pool.disconnect()
    admin.flushdb()
    admin.close()


# -- counting -------------------------------------------------------------------------


class _Count:
    """Requests written and commands sent, shared by the counting connections."""

    trips = 0
    commands: Counter[str] = Counter()

    @classmethod
    def reset(cls) -> None:
        cls.trips = 0
        cls.commands = Counter()


def _name(arg: object) -> str:
    return (arg.decode() if isinstance(arg, bytes) else str(arg)).upper()


class CountingConnection(redis.Connection):
    """Counts every request written (one round trip each) and every command by name."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _Count.trips += 1
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        _Count.commands[_name(args[0])] += 1
        super().send_command(*args, **kwargs)


class AsyncCountingConnection(redis.asyncio.Connection):
    """The asyncio twin of :class:`CountingConnection`."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _Count.trips += 1
        await super().send_packed_command(command, check_health)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        _Count.commands[_name(args[0])] += 1
        await super().send_command(*args, **kwargs)


@dataclass
class Counted:
    """Exact work per decision for one subject and API."""

    trips: float
    sent: dict[str, float]
    server: dict[str, float]


def count_pass(subs: list[Subject], port: int, n: int) -> dict[tuple[str, str], Counted]:
    """Round trips, commands sent and server calls per decision, sync and asyncio, admitted workload."""
    admin = redis.Redis(port=port)
    w = WORKLOADS[0]
    out: dict[tuple[str, str], Counted] = {}

    def record(api: str, label: str) -> None:
        server = {k: v / n for k, v in commandstats(admin).items() if v}
        out[(api, label)] = Counted(_Count.trips / n, {k: v / n for k, v in _Count.commands.items()}, server)

    for s in subs:
        decide = s.make(redis.ConnectionPool(port=port, connection_class=CountingConnection), w)
        decide(w.keys[0])  # the first call may load the script
        admin.config_resetstat()
        _Count.reset()
        for i in range(n):
            decide(w.keys[i % len(w.keys)])
        record("sync", s.label)

    async def run_async() -> None:
        for s in subs:
            pool = redis.asyncio.ConnectionPool(port=port, connection_class=AsyncCountingConnection)
            decide = s.amake(pool, w)
            await decide(w.keys[0])
            admin.config_resetstat()
            _Count.reset()
            for i in range(n):
                await decide(w.keys[i % len(w.keys)])
            record("asyncio", s.label)
            await pool.disconnect()

    asyncio.run(run_async())
    admin.close()
    return out


# -- report ---------------------------------------------------------------------------


def _per(counts: dict[str, float]) -> str:
    parts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:.2f}".replace(".00", "") for k, v in parts if v >= 0.01) or "none"


def _mode(api: str, conc: int) -> str:
    unit = "thread" if api == "sync" else "task"
    return f"{api} {conc} {unit}{'s' if conc > 1 else ''}"


def report(subs: list[Subject], results: Results, counted: dict[tuple[str, str], Counted],
           meta: dict[str, str]) -> str:
    """The Markdown tables: decisions/s and ratios per workload and mode, client CPU, work per decision."""
    out = [f"Run {meta['date']}, tree at `{meta['commit']}` (`{meta['command']}`, {meta['took']}).",
           f"Machine: {meta['machine']}. Redis PING median {meta['rtt']}.", ""]
    for w in WORKLOADS:
        rows = []
        for s in subs:
            cells: list[object] = [s.label]
            for api, conc in MODES:
                mine = results[(api, conc, w.name, s.label)]
                med = statistics.median(mine.rates)
                cells.append(f"{med:,.0f}")
                if s.peer:
                    peer = results[(api, conc, w.name, s.peer)]
                    ratios = [a / b for a, b in zip(mine.rates, peer.rates, strict=True)]
                    cells.append(f"**{med / statistics.median(peer.rates):.2f}** ({statistics.median(ratios):.2f}; "
                                 f"{min(ratios):.2f}-{max(ratios):.2f})")
                else:
                    cells.append("-")
            rows.append(cells)
        headers = ["limiter"]
        for api, conc in MODES:
            headers += [f"{_mode(api, conc)}/s", "vs peer (paired; range)"]
        shares = [x for (_, _, name, _), series in results.items() if name == w.name for x in series.admitted]
        out += [f"Workload **{w.name}** ({len(w.keys)} key{'s' if len(w.keys) > 1 else ''}, {w.rate}/s per key; "
                f"decisions admitted: {min(shares):.0%}-{max(shares):.0%}), decisions/s, median of reps:", "",
                table(headers, rows), ""]
    rows = []
    for s in subs:
        rows.append([s.label, *(f"{statistics.median(results[(api, 1, w.name, s.label)].cpu_us):.0f}"
                                for api in ("sync", "asyncio") for w in WORKLOADS)])
    out += ["Client CPU per decision, us (`process_time`, 1 thread / 1 task, median of reps):", "",
            table(["limiter", *(f"{api} {w.name}" for api in ("sync", "asyncio") for w in WORKLOADS)], rows), ""]
    rows = []
    for s in subs:
        for api in ("sync", "asyncio"):
            c = counted[(api, s.label)]
            rows.append([s.label, api, f"{c.trips:.2f}".replace(".00", ""), _per(c.sent),
                         f"{sum(c.server.values()):.2f}".replace(".00", "") + f" ({_per(c.server)})"])
    out += ["Work per decision (exact; admitted workload, private redis-server):", "",
            table(["limiter", "API", "round trips", "commands sent", "commandstats calls (incl. inside Lua)"], rows),
            "", "Peers: " + "; ".join(f"{s.label} vs {s.peer}" for s in subs if s.peer) + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the rate-limit benchmark and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 reps x 600 decisions, under a minute")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        import limits

        subs = subjects()
        admin = redis.Redis.from_url(URL)
        rtt = _redis_rtt_us(admin)
        server_version = admin.info("server")["redis_version"]
        admin.close()
        results: Results = {}
        run_sync(subs, plan, results)
        asyncio.run(run_async(subs, plan, results))
        wd = infra.workdir()
        _, private = infra.private_redis(PRIVATE_PORT, wd)
        counted = count_pass(subs, int(private.rsplit(":", 1)[1].split("/")[0]), plan.count_n)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=infra.ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_reliable/ratelimit",
                                "celery_reliable/lua", "celery_reliable/scripts.py"], cwd=infra.ROOT,
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += "` + uncommitted changes to the limiters (`celery_reliable/ratelimit`, `lua`, `scripts.py`)"
        meta = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "command": ".venv/bin/python -m bench.ratelimits" + (" --quick" if args.quick else ""),
            "took": f"{time.monotonic() - started:.0f} s, {plan.reps} reps x {plan.n} decisions per block",
            "machine": f"{os.cpu_count()} cores (shared, noisy), {platform.python_implementation()} "
                       f"{platform.python_version()}, Redis {server_version}, redis-py {redis.__version__}, "
                       f"limits {limits.__version__}",
            "rtt": f"{rtt:.0f} us",
        }
        print()
        print(report(subs, results, counted, meta))
    finally:
        infra.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
