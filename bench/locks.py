"""Uncontended lock acquire+release pairs per second: celery-reliable's locks against their peers.

Usage (from the repository root)::

    .venv/bin/python -m bench.locks            # full: 7 reps x 2000 pairs per lock, ~2 min
    .venv/bin/python -m bench.locks --quick    # 3 reps x 500 pairs, under a minute

What runs. One thread, one process: each *pair* builds a new lock object (as
``with client.lock(name):`` does), calls ``acquire()`` (it must return True: nobody else
wants the lock) and ``release()``. Every pair of one implementation uses the **same
name** (a hot lock taken over and over; names differ between implementations). That
is the uncontended case as long as the pairs run one after another, and it keeps the
servers' key counts flat: ``RedisLock`` and our ``Redlock`` keep a fence key per name
for a week, so a new name per pair would leave thousands of keys behind.

Redis locks run on three private ``redis-server`` processes started here (ports from
6395 up, or free ones; killed at exit), so their ``INFO commandstats`` see nothing but
this benchmark. Single-node locks use the first; the 3-node Redlocks use all three.
PostgreSQL locks use database ``reliable_bench_locks`` (dropped, created and migrated
by each run).

How it is measured.

* Throughput: per rep and lock, ``n`` pairs (``n // 2`` for the locks that take over
  ~1 ms a pair, ``n // 4`` for pottery on 3 nodes, to keep the run short) timed with
  ``perf_counter`` around the loop, after a warm-up that loads the scripts, opens the
  connections and starts the heartbeat thread. ``gc`` stays on (collected before each
  block), as in a real process; the heartbeat never fires (leases of 30 s). The order
  of the locks is reversed every other rep, so drift of the machine hits all of them
  alike. Reported: median pairs/s over reps, the ratio of that median to the baseline's
  (redis-py ``Lock`` for Redis locks, a raw ``pg_advisory_lock``/``pg_advisory_unlock``
  on one held connection for PostgreSQL locks), and the range of the per-rep ratios
  (each rep's lock against the baseline of the same rep).
* Client CPU: ``time.process_time()`` around the same loop (every thread of this
  process, so pottery's pool threads count), per pair: what the client library costs,
  less sensitive to the other tenants than wall-clock time.
* Commands, server side (exact, noise-free): ``CONFIG RESETSTAT`` before and ``INFO
  commandstats`` after every timed block, summed over reps and divided by the pairs,
  per server. Redis counts the commands a Lua script runs as calls too.
* Round trips and commands sent, client side (exact): after the timed reps, a counting
  pass through :mod:`bench.counting` (requests written to the first server, from every
  thread: pottery talks to its masters from a thread pool), plus SQL statements and
  pool checkouts for the PostgreSQL locks. The patches stay in after it, which is why it
  runs last.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from . import counting, infra
from .measure import commandstats
from .run import _pg_us, _redis_rtt_us
from .stats import breakdown, per_task, table

DB_URL = "postgresql+psycopg://root@127.0.0.1/reliable_bench_locks"
PORTS = (6395, 6396, 6397)
TTL = 30
REDIS_BASE = "redis-py Lock"
PG_BASE = "raw pg_advisory_lock/unlock"

Pair = Callable[[], None]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    n: int
    reps: int
    warmup: int
    count_n: int


FULL = Plan(n=2000, reps=7, warmup=300, count_n=200)
QUICK = Plan(n=500, reps=3, warmup=100, count_n=100)


@dataclass
class Lock:
    """One implementation: how to run a pair, and what was measured."""

    label: str
    kind: str  # "redis" or "pg"
    nodes: int  # Redis servers it talks to
    pair: Pair | None
    skipped: str = ""
    slow: int = 1  # a block runs plan.n // slow pairs (keeps the full run under ~3 minutes)
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # this process's CPU time per pair, all threads
    server: list[Counter[str]] = field(default_factory=list)  # commandstats calls per node, all reps
    pairs_timed: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def base(self) -> str:
        return REDIS_BASE if self.kind == "redis" else PG_BASE


class NotGranted(RuntimeError):
    """An uncontended acquire returned False: the benchmark is broken, not slow."""


def _granted(ok: object, label: str) -> None:
    if ok is False:
        raise NotGranted(f"{label}: acquire() returned False with nobody else holding the lock")


# -- the implementations --------------------------------------------------------------


def redis_locks(nodes: list[redis.Redis]) -> list[Lock]:
    """The Redis locks, each a pair function on the private servers."""
    import redis_lock
    from pottery import Redlock as PotteryRedlock

    from celery_reliable.locks import RedisLock

    one = nodes[0]

    def ours(renew: bool) -> Pair:
        def pair() -> None:
            lock = RedisLock(one, f"ours-{renew}", TTL, renew=renew)
            _granted(lock.acquire(), "RedisLock")
            lock.release()
        return pair

    def redis_py() -> None:
        lock = one.lock("redis-py", timeout=TTL)
        _granted(lock.acquire(), "redis-py")
        lock.release()

    def prl(auto_renewal: bool) -> Pair:
        def pair() -> None:
            lock = redis_lock.Lock(one, f"prl-{auto_renewal}", expire=TTL, auto_renewal=auto_renewal)
            _granted(lock.acquire(), "redis_lock")
            lock.release()
        return pair

    def pottery(masters: list[redis.Redis]) -> Pair:
        def pair() -> None:
            lock = PotteryRedlock(key=f"pottery-{len(masters)}", masters=set(masters), auto_release_time=TTL)
            _granted(lock.acquire(), "pottery")
            lock.release()
        return pair

    locks = [
        Lock(REDIS_BASE, "redis", 1, redis_py),
        Lock("RedisLock (fencing token + heartbeat)", "redis", 1, ours(True)),
        Lock("RedisLock renew=False (fencing token)", "redis", 1, ours(False)),
        Lock("python-redis-lock", "redis", 1, prl(False)),
        Lock("python-redis-lock auto_renewal=True", "redis", 1, prl(True)),
        Lock("pottery Redlock, 1 node", "redis", 1, pottery(nodes[:1]), slow=2),
        Lock("pottery Redlock, 3 nodes", "redis", 3, pottery(nodes), slow=4),
    ]
    label = "celery-reliable Redlock, 3 nodes (fencing token + heartbeat)"
    try:
        from celery_reliable.locks.redlock import Redlock
    except Exception as exc:  # written by another engineer: may not exist yet
        locks.append(Lock(label, "redis", 3, None, skipped=f"celery_reliable.locks.redlock: {exc!r}", slow=2))
    else:
        def redlock() -> None:
            lock = Redlock(nodes, "redlock-3", ttl=TTL)
            _granted(lock.acquire(), "Redlock")
            lock.release()
        locks.append(Lock(label, "redis", 3, redlock, slow=2))
    return locks


def pg_locks(engine: Engine, held: Connection) -> list[Lock]:
    """The PostgreSQL locks; ``held`` is an AUTOCOMMIT connection kept open for the run."""
    from celery_reliable.locks.names import advisory_id

    lock_sql, unlock_sql = text("SELECT pg_advisory_lock(:k)"), text("SELECT pg_advisory_unlock(:k)")
    raw_key = advisory_id("raw")

    def raw() -> None:
        held.execute(lock_sql, {"k": raw_key}).scalar()
        if not held.execute(unlock_sql, {"k": raw_key}).scalar():
            raise NotGranted("raw advisory unlock returned false")

    locks = [Lock(PG_BASE, "pg", 0, raw)]
    variants: tuple[tuple[str, Engine | Connection, bool], ...] = (
        ("PostgresAdvisoryLock(engine) (fencing token + heartbeat)", engine, True),
        ("PostgresAdvisoryLock(connection) (fencing token)", held, True),
        ("PostgresAdvisoryLock(engine, blocking=False)", engine, False),
        ("PostgresAdvisoryLock(connection, blocking=False)", held, False),
    )
    try:
        from celery_reliable.locks.advisory import PostgresAdvisoryLock
    except Exception as exc:  # written by another engineer: may not exist yet
        reason = f"celery_reliable.locks.advisory: {exc!r}"
        return locks + [Lock(label, "pg", 0, None, skipped=reason) for label, _, _ in variants]

    def advisory(bind: Engine | Connection, name: str, blocking: bool) -> Pair:
        def pair() -> None:
            lock = PostgresAdvisoryLock(bind, name, blocking=blocking)
            _granted(lock.acquire(), "PostgresAdvisoryLock")
            lock.release()
        return pair

    for i, (label, bind, blocking) in enumerate(variants):
        locks.append(Lock(label, "pg", 0, advisory(bind, f"ours-{i}", blocking), slow=2))
    return locks


# -- setup ----------------------------------------------------------------------------


def fresh_database(url: str) -> tuple[Engine, str]:
    """Drop and recreate the bench database, migrate it; create the fence sequence if no migration did."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()
    engine = infra.prepare_database(url)
    note = ""
    with engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass('reliable_fence_seq')")).scalar() is None:
            conn.execute(text("CREATE SEQUENCE reliable_fence_seq"))
            note = "reliable_fence_seq is not created by any migration yet: the benchmark created it"
    return engine, note


def start_nodes() -> list[redis.Redis]:
    """Three private ``redis-server`` processes (killed at exit), one client each."""
    root = infra.workdir()
    clients = []
    for i, port in enumerate(PORTS):
        wd = root / f"node{i}"
        wd.mkdir()
        _, url = infra.private_redis(port, wd)
        clients.append(redis.Redis.from_url(url))
    print(f"private redis-servers on ports {[c.connection_pool.connection_kwargs['port'] for c in clients]}; "
          f"logs under {root}", flush=True)
    return clients


# -- measuring ------------------------------------------------------------------------


def timed_block(pair: Pair, n: int) -> tuple[float, float]:
    """Wall-clock seconds and this process's CPU seconds (all threads) taken by ``n`` pairs."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        pair()
    return time.perf_counter() - t0, time.process_time() - c0


def run_reps(locks: list[Lock], nodes: list[redis.Redis], plan: Plan) -> None:
    """Warm up every lock, then ``plan.reps`` reps of ``plan.n`` pairs, order reversed every other rep."""
    live = [lk for lk in locks if lk.pair is not None]
    for lk in live:
        assert lk.pair is not None
        timed_block(lk.pair, plan.warmup)
        lk.server = [Counter() for _ in nodes]
    for rep in range(plan.reps):
        for lk in live if rep % 2 == 0 else live[::-1]:
            assert lk.pair is not None
            if lk.kind == "redis":
                for node in nodes:
                    node.config_resetstat()
            n = plan.n // lk.slow
            seconds, cpu = timed_block(lk.pair, n)
            lk.rates.append(n / seconds)
            lk.cpu_us.append(cpu / n * 1e6)
            if lk.kind == "redis":
                for total, node in zip(lk.server, nodes, strict=True):
                    total.update(commandstats(node))
                lk.pairs_timed += n
        print(f"rep {rep + 1}/{plan.reps} done", flush=True)


def count_pass(locks: list[Lock], first_port: int, n: int) -> None:
    """Exact client-side counts per lock (installs bench.counting's patches for good: run last)."""
    counting.install(first_port)
    # bench.counting counts per thread; pottery sends from a thread pool, so count in every thread.
    counting._local = types.SimpleNamespace()  # type: ignore[assignment]
    for lk in locks:
        if lk.pair is None:
            continue
        counting.start()
        for _ in range(n):
            lk.pair()
        lk.counts = counting.stop()
        lk.counts["tasks"] = n  # bench.stats.per_task/breakdown divide by "tasks"


# -- report ---------------------------------------------------------------------------


def server_calls(lk: Lock) -> str:
    """``14 (evalsha 2, get 1, ...)`` per pair and per server; servers that differ are listed one by one."""
    def one(calls: Counter[str]) -> str:
        total = f"{sum(calls.values()) / lk.pairs_timed:.2f}".rstrip("0").rstrip(".")
        per = sorted(((k, v / lk.pairs_timed) for k, v in calls.items()), key=lambda kv: (-kv[1], kv[0]))
        detail = ", ".join(f"{k} {v:.2f}".replace(".00", "") for k, v in per if v >= 0.01)
        return f"{total} ({detail})"

    shown = [one(c) for c in lk.server[: lk.nodes]]
    if len(set(shown)) == 1:
        return shown[0] + (" on each" if lk.nodes > 1 else "")
    return "; ".join(f"node {i + 1}: {text}" for i, text in enumerate(shown))


def per_rep_ratios(lk: Lock, base: Lock) -> list[float]:
    return [a / b for a, b in zip(lk.rates, base.rates, strict=True)]


def report(locks: list[Lock], meta: dict[str, str]) -> str:
    """The Markdown tables and the verdicts on the targets."""
    by_label = {lk.label: lk for lk in locks}
    out = [f"Run {meta['date']}, tree at `{meta['commit']}` (`{meta['command']}`, {meta['took']}).",
           f"Machine: {meta['machine']}. Redis PING median {meta['rtt']}; PostgreSQL `SELECT 1` median {meta['pg']}.",
           ""]
    redis_rows, pg_rows = [], []
    for lk in locks:
        if lk.pair is None:
            continue
        base = by_label[lk.base]
        med = statistics.median(lk.rates)
        ratios = per_rep_ratios(lk, base)
        common = [lk.label, f"{med:,.0f}", f"{1e6 / med:.0f}", f"{statistics.median(lk.cpu_us):.0f}",
                  f"{med / statistics.median(base.rates):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}"]
        if lk.kind == "redis":
            redis_rows.append([*common[:1], lk.nodes, *common[1:],
                               f"{per_task(lk.counts, 'redis_round_trips'):g}", breakdown(lk.counts), server_calls(lk)])
        else:
            pg_rows.append([*common, f"{per_task(lk.counts, 'sql_statements'):g}",
                            f"{per_task(lk.counts, 'sql_checkouts'):g}"])
    out.append(table(("lock", "nodes", "pairs/s", "us/pair", "client CPU us/pair", f"vs {REDIS_BASE}", "per-rep ratios",
                      "round trips/pair (per node)", "commands sent/pair (per node)",
                      "commandstats calls/pair per server (incl. inside Lua)"), redis_rows))
    out += ["", table(("lock", "pairs/s", "us/pair", "client CPU us/pair", "vs raw advisory lock", "per-rep ratios",
                       "SQL statements/pair", "pool checkouts/pair"), pg_rows)]
    skipped = [f"* skipped {lk.label}: {lk.skipped}" for lk in locks if lk.pair is None]
    if skipped:
        out += ["", *skipped]
    out += ["", *targets(by_label)]
    return "\n".join(out)


def targets(by_label: dict[str, Lock]) -> list[str]:
    """Verdicts on the issue's targets."""
    lines = []
    ours, base = by_label["RedisLock (fencing token + heartbeat)"], by_label[REDIS_BASE]
    ratio = statistics.median(ours.rates) / statistics.median(base.rates)
    trips = per_task(ours.counts, "redis_round_trips")
    sent = sum(counting.redis_commands(ours.counts).values()) / ours.counts["tasks"]
    met = ratio >= 0.9 and trips <= 2 and sent <= 2
    lines.append(f"* target RedisLock pair = 2 round trips / 2 commands and >= 0.9x {REDIS_BASE}: "
                 f"{trips:g} round trips, {sent:g} commands, {ratio:.2f}x -> {'met' if met else 'MISSED'}")
    mine, peer = by_label["celery-reliable Redlock, 3 nodes (fencing token + heartbeat)"], \
        by_label["pottery Redlock, 3 nodes"]
    if mine.pair is None or peer.pair is None:
        lines.append("* target Redlock 3 nodes >= pottery Redlock 3 nodes: not measured (skipped)")
    else:
        r = statistics.median(mine.rates) / statistics.median(peer.rates)
        lo = min(a / b for a, b in zip(mine.rates, peer.rates, strict=True))
        lines.append(f"* target celery-reliable Redlock (3 nodes) >= pottery Redlock (3 nodes): {r:.2f}x "
                     f"(lowest per-rep ratio {lo:.2f}) -> {'met' if r >= 1.0 else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the lock benchmark and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.locks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 reps x 500 pairs, under a minute")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        nodes = start_nodes()
        engine, note = fresh_database(DB_URL)
        if note:
            print(note, flush=True)
        held = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        locks = redis_locks(nodes) + pg_locks(engine, held)
        for lk in locks:
            if lk.pair is None:
                print(f"skipping {lk.label}: {lk.skipped}", flush=True)
        rtt = _redis_rtt_us(nodes[0])
        pg_select_us, _ = _pg_us(engine)
        run_reps(locks, nodes, plan)
        count_pass(locks, nodes[0].connection_pool.connection_kwargs["port"], plan.count_n)
        held.close()
        engine.dispose()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=infra.ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_reliable"], cwd=infra.ROOT,
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += "` + uncommitted changes in `celery_reliable/"
        meta = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit,
            "command": ".venv/bin/python -m bench.locks" + (" --quick" if args.quick else ""),
            "took": f"{time.monotonic() - started:.0f} s, {plan.reps} reps x {plan.n} pairs",
            "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
                       f"redis-py {redis.__version__}",
            "rtt": f"{rtt:.0f} us",
            "pg": f"{pg_select_us:.0f} us",
        }
        print()
        print(report(locks, meta))
    finally:
        infra.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
