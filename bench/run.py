"""Benchmark celery-reliable against plain Celery with real ``celery worker`` processes.

Usage (from the repository root)::

    .venv/bin/python -m bench.run            # full run, about 5 minutes
    .venv/bin/python -m bench.run --quick    # smaller, under about 2 minutes

For each pool (``-P solo``, ``-P prefork -c 2``) and each mode (Redis-only: no
``reliable_database_url``; PostgreSQL: with it) one worker is started, warmed up, and
then runs interleaved repetitions (ABBA order) of the plain task and its reliable twin,
so both see the same machine noise. Prints Markdown tables; writes the raw figures as
JSON. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from . import infra
from .measure import Rep
from .peers import PubResult, run_peers
from .stats import pct

DB_URL = "postgresql+psycopg://root@127.0.0.1/reliable_bench"
BROKER = "redis://127.0.0.1:6379/4"
BACKEND = "redis://127.0.0.1:6379/5"
MODES = {"redis": ("plain_noop", "reliable_noop"), "pg": ("plain_insert", "reliable_insert"),
         "guards": ("plain_noop", "reliable_guarded"), "guards-each": ("plain_noop", "reliable_guarded_each")}
TARGETS = {"redis": 0.8, "pg": 0.5, "guards": 0.5, "guards-each": 0.5}
POOLS = (("solo", 1), ("prefork", 2))


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    n: int
    reps: int
    warmup: int
    count_n: int
    paced_n: int
    paced_rate: float
    paced_reps: int
    peer_m: int
    peer_reps: int


@dataclass
class WorkerResult:
    """Everything measured on one worker (one pool, one mode)."""

    counted: dict[str, Rep] = field(default_factory=dict)
    timed: dict[str, list[Rep]] = field(default_factory=dict)
    paced: dict[str, list[Rep]] = field(default_factory=dict)


QUICK = Plan(n=300, reps=3, warmup=50, count_n=50, paced_n=100, paced_rate=100.0, paced_reps=1,
             peer_m=300, peer_reps=3)
FULL = Plan(n=1000, reps=7, warmup=200, count_n=200, paced_n=200, paced_rate=100.0, paced_reps=3,
            peer_m=2000, peer_reps=5)


def _redis_rtt_us(client: redis.Redis, n: int = 2000) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def _pg_us(engine: Engine, n: int = 300) -> tuple[float, float]:
    """Median SELECT 1 and one-row INSERT + COMMIT times (us), for context."""
    select, commit = [], []
    with engine.connect() as conn:
        for i in range(n):
            t0 = time.perf_counter()
            conn.exec_driver_sql("SELECT 1").all()
            t1 = time.perf_counter()
            conn.execute(text("INSERT INTO bench_effects (n, task_id, kind) VALUES (:n, '', 'calibrate')"), {"n": i})
            conn.commit()
            select.append((t1 - t0) * 1e6)
            commit.append((time.perf_counter() - t1) * 1e6)
    return statistics.median(select), statistics.median(commit)


def _run_worker(plan: Plan, pool: str, conc: int, mode: str, reliable_url: str, wd: Path) -> WorkerResult:
    from .app import app
    from .measure import Target, run_rep

    node = f"bench-{mode}-{pool}@localhost"
    env = {"BENCH_RELIABLE_REDIS": reliable_url, "BENCH_KEY_PREFIX": f"rb-{mode}", "BENCH_BROKER": BROKER,
           "BENCH_BACKEND": BACKEND, "BENCH_DATABASE_URL": DB_URL if mode == "pg" else ""}
    proc = infra.start_worker(node, pool, conc, env, wd)
    try:
        infra.wait_ready(app, node, proc)
        target = Target(app, node, redis.Redis.from_url(BACKEND), redis.Redis.from_url(reliable_url))
        kinds = MODES[mode]
        for kind in kinds:
            run_rep(target, kind, plan.warmup, f"{pool}-warm")
        res = WorkerResult(timed={kind: [] for kind in kinds})
        for kind in kinds:
            res.counted[kind] = run_rep(target, kind, plan.count_n, f"{pool}-c", count=True)
        for rep in range(plan.reps):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                r = run_rep(target, kind, plan.n, f"{pool}-t{rep}")
                res.timed[kind].append(r)
                print(f"  {pool:8} {kind:16} rep {rep + 1}/{plan.reps}: {r.tasks_per_s:7.1f} tasks/s", flush=True)
        if pool == "solo":
            res.paced = {kind: [] for kind in kinds}
            for rep in range(plan.paced_reps):
                for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                    res.paced[kind].append(run_rep(target, kind, plan.paced_n, f"{pool}-p{rep}", rate=plan.paced_rate))
        return res
    finally:
        infra.stop(proc)


def _report(results: dict[tuple[str, str], WorkerResult], peers: list[PubResult], meta: dict[str, Any]) -> str:
    from .stats import breakdown, cycle_rate, median_rate, per_task, pooled, server_breakdown, table

    out = [f"Run {meta['date']} on {meta['machine']}; n={meta['n']} tasks x {meta['reps']} reps per config "
           f"(medians). Medians measured from Python here: Redis PING {meta['redis_rtt_us']:.0f} us, "
           f"PostgreSQL SELECT 1 {meta['pg_select_us']:.0f} us, "
           f"one-row INSERT + COMMIT {meta['pg_commit_us']:.0f} us.", "",
           "### Throughput (tasks/s, median of reps; ratio = reliable / plain, same worker, interleaved)", ""]
    rows: list[tuple[object, ...]] = []
    for (pool, mode), res in results.items():
        plain, rel = MODES[mode]
        t = res.timed
        ratios = [b.tasks_per_s / a.tasks_per_s for a, b in zip(t[plain], t[rel], strict=True)]
        ratio = median_rate(t[rel]) / median_rate(t[plain])
        rows.append((pool, rel, median_rate(t[plain]), median_rate(t[rel]), ratio,
                     f"{min(ratios):.2f}-{max(ratios):.2f}", cycle_rate(t[rel]) / cycle_rate(t[plain]),
                     f">= {TARGETS[mode]}", "met" if ratio >= TARGETS[mode] else "MISSED"))
    out += [table(("pool", "workload", "plain/s", "reliable/s", "ratio", "per-rep ratios", "cycle-based ratio",
                   "target", ""), rows), ""]

    out += ["### In-worker time per task (ms): task_prerun -> date_done, all timed reps pooled", ""]
    rows = []
    for (pool, mode), res in results.items():
        plain, rel = MODES[mode]
        sp, sr = pooled(res.timed[plain], "service_ms"), pooled(res.timed[rel], "service_ms")
        for kind, s in ((plain, sp), (rel, sr)):
            rows.append((pool, kind, pct(s, 0.5), pct(s, 0.99),
                         *(pct(pooled(res.timed[kind], a), 0.5) for a in ("pre_ms", "body_ms", "post_ms"))))
        rows.append((pool, "added by reliable", pct(sr, 0.5) - pct(sp, 0.5), pct(sr, 0.99) - pct(sp, 0.99), "", "", ""))
    out += [table(("pool", "task", "p50", "p99", "before body p50", "body p50", "after body p50"), rows), ""]

    out += [f"### End-to-end latency (ms), publish -> date_done, paced at {meta['paced_rate']:.0f}/s, -P solo "
            f"(median over {meta['paced_reps']} reps of each rep's p50 / p99)", ""]
    rows = []
    for (_, mode), res in results.items():
        if not res.paced:
            continue
        plain, rel = MODES[mode]
        q = {k: [statistics.median(pct(r.e2e_ms, x) for r in res.paced[k]) for x in (0.5, 0.99)] for k in (plain, rel)}
        rows += [(kind, *q[kind]) for kind in (plain, rel)]
        rows.append(("added by reliable", q[rel][0] - q[plain][0], q[rel][1] - q[plain][1]))
    out += [table(("task", "p50", "p99"), rows), ""]

    out += ["### Work per task on the reliable Redis and the database (exact counts from the task's own thread)", ""]
    rows = []
    for (pool, mode), res in results.items():
        for kind in MODES[mode]:
            c = res.counted[kind].counts
            rows.append((pool, kind, per_task(c, "redis_round_trips"), breakdown(c),
                         server_breakdown(res.timed[kind]), per_task(c, "sql_statements"),
                         per_task(c, "sql_commits"), per_task(c, "sql_pre_pings")))
    out += [table(("pool", "task", "Redis round trips", "Redis commands sent", "server commandstats calls",
                   "SQL statements", "commits", "pre-pings"), rows), ""]

    out += [f"### Publish-time dedup, {meta['peer_m']} keys published then published again "
            f"(median of {meta['peer_reps']} reps)", ""]
    rows = [(p.label, p.phase, p.ops_per_s, p.published, p.round_trips, p.server_calls) for p in peers]
    out += [table(("library", "phase", "apply_async/s", "messages sent per call", "Redis round trips per call",
                   "Redis commands per call"), rows)]
    return "\n".join(out)


def _check_effects(expected: int) -> str:
    from sqlalchemy import create_engine

    engine = create_engine(DB_URL)
    with engine.connect() as conn:
        total, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT n) FROM bench_effects WHERE kind = 'reliable'")).one()
    engine.dispose()
    ok = total == distinct == expected
    verdict = "ok" if ok else "WRONG"
    return f"effects check: {total} reliable rows, {distinct} distinct keys, {expected} expected: {verdict}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, under about 2 minutes")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--no-peers", action="store_true", help="skip the celery-once comparison")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated workloads to run (default: all of {', '.join(MODES)})")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; the modes are {sorted(MODES)}")
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    wd = infra.workdir()
    try:
        _, reliable_url = infra.private_redis(6390, wd)
        os.environ.update(BENCH_RELIABLE_REDIS=reliable_url, BENCH_BROKER=BROKER, BENCH_BACKEND=BACKEND)
        pg_select_us, pg_commit_us = _pg_us(infra.prepare_database(DB_URL))
        from .app import app

        for url in (BROKER, BACKEND):
            redis.Redis.from_url(url).flushdb()
        rtt = _redis_rtt_us(redis.Redis.from_url(reliable_url))
        print(f"logs in {wd}; reliable Redis {reliable_url}", flush=True)
        results: dict[tuple[str, str], WorkerResult] = {}
        for pool, conc in POOLS:
            for mode in modes:
                results[(pool, mode)] = _run_worker(plan, pool, conc, mode, reliable_url, wd)
        peers: list[PubResult] = []
        if not args.no_peers:
            peers = run_peers(app, plan.peer_m, plan.peer_reps, redis.Redis.from_url(reliable_url),
                              redis.Redis.from_url(BROKER))
        per_worker = plan.warmup + plan.count_n + plan.n * plan.reps
        expected = len(POOLS) * per_worker + plan.paced_n * plan.paced_reps
        meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
                           "shared and noisy", "n": plan.n, "reps": plan.reps, "paced_rate": plan.paced_rate,
                "paced_reps": plan.paced_reps,
                "peer_m": plan.peer_m, "peer_reps": plan.peer_reps, "redis_rtt_us": rtt,
                "pg_select_us": pg_select_us, "pg_commit_us": pg_commit_us}
        print()
        print(_report(results, peers, meta))
        print()
        if "pg" in modes:
            print(_check_effects(expected))
        for url in (BROKER, BACKEND):
            redis.Redis.from_url(url).flushdb()
        out = args.json or wd / "results.json"
        out.write_text(json.dumps({"meta": meta, "results": {f"{p}/{m}": _jsonable(r) for (p, m), r in results.items()},
                                   "peers": [asdict(p) for p in peers]}, default=str))
        print(f"raw figures: {out}; took {time.monotonic() - started:.0f} s")
    finally:
        infra.stop_all()
    return 0


def _jsonable(res: WorkerResult) -> dict[str, Any]:
    """The figures of one worker, per-task samples summarised as p50 / p99."""
    def rep(r: Rep) -> dict[str, Any]:
        d = asdict(r)
        for key in ("service_ms", "pre_ms", "body_ms", "post_ms", "cycle_ms", "e2e_ms"):
            d[key] = {"p50": pct(d[key], 0.5), "p99": pct(d[key], 0.99)} if d[key] else None
        return d

    return {"counted": {k: rep(v) for k, v in res.counted.items()},
            "timed": {k: [rep(r) for r in v] for k, v in res.timed.items()},
            "paced": {k: [rep(r) for r in v] for k, v in res.paced.items()}}


if __name__ == "__main__":
    sys.exit(main())
