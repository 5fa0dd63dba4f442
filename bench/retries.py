"""Retries and dead letters: what a retry costs, how fast letters are stored, what waiting costs.

Usage (from the repository root)::

    .venv/bin/python -m bench.retries            # full run, about 4.5 minutes
    .venv/bin/python -m bench.retries --quick    # smaller, about 1.5 minutes

Three private ``redis-server`` processes are started (ports from 6391, or free ones;
killed at exit): the **reliable Redis** (``reliable_redis_url``), the **broker** and the
**result backend**, so ``INFO commandstats`` of the first two see only the benchmark's
traffic. Dead letters go to PostgreSQL database ``reliable_bench`` (created if missing,
migrated; its ``reliable_dead_letters`` table is emptied by each run). Workers are real
``celery -A bench.retry_app worker`` processes in their own sessions, killed by process
group. See :mod:`bench.retry_app` for the tasks and what each worker process counts.

1. **Commands per retry and retries/s.** Per pool (``-P solo``, ``-P prefork -c 2``) one
   worker runs, interleaved (ABBA), reps of ``plain_fail`` (Celery ``self.retry(countdown)``:
   an ETA message) and ``reliable_fail`` (``RetryPolicy(max_attempts=4, base=0.01,
   cap=0.05)``: retries parked in the deferred set and pumped back; the 4th failure is
   dead-lettered). A rep publishes ``n`` tasks to a fresh queue the worker does not
   consume yet, resets the servers' stats, adds the queue to the worker and waits until
   every task has failed for good. Retries = attempts seen by ``task_prerun`` - ``n``
   (checked: attempts 0-3 of every task, and one ``exhausted`` letter per reliable task).
   Per retry, exact: ``INFO commandstats`` deltas of the reliable Redis and of the broker,
   and the round trips / commands the worker's processes sent to the reliable Redis (every
   thread, pump included), minus a baseline rep of ``n`` tasks that succeed at once
   (``plain_ok`` / ``reliable_ok``: a first delivery costs broker commands too), divided by
   the retries. Background polling (pump, BRPOP timeouts) is included. retries/s =
   retries / (first ``task_prerun`` -> last ``task_postrun``, worker clock), median of
   reps; the span includes the first and last attempt of every task. Worker ms per attempt:
   median gap between consecutive attempt starts in one process (idle gaps left out by
   the median). A last low-load rep per kind (``idle_n`` tasks) gives the wait between
   attempts (``task_postrun`` of one -> ``task_prerun`` of the next: backoff + the path's
   own latency, no queueing behind other tasks).
2. **Dead-letter inserts/s.** ``DeadLetterStore(engine).add(letter)`` in one thread, on the
   worker's engine (``celery_reliable.clients.engine_for``: ``pool_pre_ping=True``), with
   copies (new task ids) of a letter a worker stored in step 1 (real args, history and
   traceback); then the same letters again (the duplicate path). Median of reps.
3. **Memory of retries waiting on a 1 h backoff.** One fresh ``-P prefork -c 2`` worker.
   Reliable: ``park_n`` (100k) retries parked by the runner with
   ``reliable_park.apply_async(..., retries=1, countdown=3600)``, the call Celery's
   ``retry`` makes: it parks the same entry without running a failing task 100k times
   (minutes here). Plain: ``eta_n`` ETA messages sent by the runner (``plain_eta``, the
   same ``apply_async(..., retries=1, countdown=3600)``), which the worker fetches and
   holds. 100k of those would take ~3 minutes to publish and fetch here, so the full run
   holds 20k. No task runs in the worker while these are measured. Reported: VmRSS
   (``/proc/<pid>/status``) of the worker's main process and children after each stage,
   ``used_memory`` deltas of the reliable Redis and of the broker (plain Celery keeps every
   reserved message in the broker's ``unacked`` hash too). Last, ``sample`` tasks of each
   kind (``reliable_park``: ``RetryPolicy(max_attempts=2, base=3600, cap=3600,
   jitter="none")``; ``plain_eta``: ``self.retry(countdown=3600)``) fail once in the worker,
   to compare what a real retry stores with what the runner's calls stored.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from . import infra
from .measure import commandstats
from .stats import pct, table

DB_URL = "postgresql+psycopg://root@127.0.0.1/reliable_bench"
PORTS = {"reliable": 6391, "broker": 6392, "backend": 6393}
POOLS = (("solo", 1), ("prefork", 2))
META = "celery-task-meta-"
ATTEMPTS = 4  # FAIL_POLICY.max_attempts


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    n: int  # tasks per retry rep (x3 retries)
    reps: int  # reps per kind and pool
    warmup: int
    idle_n: int  # tasks of the low-load rep (waits between attempts without queueing)
    dl_n: int  # dead letters per rep
    dl_reps: int
    park_n: int  # reliable retries parked by the runner
    eta_n: int  # plain ETA retries sent by the runner and held by the worker
    sample: int  # then, of each kind, retries made by failing tasks in the worker


FULL = Plan(n=250, reps=5, warmup=20, idle_n=20, dl_n=400, dl_reps=5, park_n=100_000, eta_n=20_000,
            sample=500)
QUICK = Plan(n=80, reps=3, warmup=10, idle_n=10, dl_n=200, dl_reps=3, park_n=20_000, eta_n=5_000,
             sample=200)


@dataclass
class Servers:
    """The three private Redis servers."""

    urls: dict[str, str]
    reliable: redis.Redis
    broker: redis.Redis
    backend: redis.Redis


@dataclass
class Rep:
    """One rep of one task kind."""

    kind: str
    n: int
    attempts: int
    seconds: float  # first task_prerun -> last task_postrun
    attempt_ms: float  # median gap between consecutive attempt starts in one worker process
    wait_ms: tuple[float, float]  # p50, p90 of task_postrun of attempt k -> task_prerun of attempt k+1
    reliable_calls: dict[str, int]
    broker_calls: dict[str, int]
    counts: dict[str, int]  # client-side, reliable Redis, all threads of all worker processes
    mine: dict[str, int]  # parks, pump steps
    sql: dict[str, int] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        return self.attempts - self.n

    @property
    def rate(self) -> float:
        return (self.retries or self.n) / self.seconds


def order(n: int) -> dict[str, Any]:
    """Realistic arguments: an order of a few lines (~400 bytes of JSON)."""
    return {"order_id": f"ord_{n:09d}", "customer": {"id": f"cus_{n * 7919 % 10**8:08d}", "email": f"c{n}@example.com",
                                                     "country": "FR"},
            "amount": {"value": 1000 + n % 9000, "currency": "EUR"}, "gateway": "stripe", "attempt_key": f"k-{n}",
            "lines": [{"sku": f"SKU-{(n + i) % 997:04d}", "qty": 1 + i, "unit": 250 * (i + 1)} for i in range(3)],
            "metadata": {"source": "checkout", "campaign": None, "flags": ["3ds", "saved-card"]}}


# -- processes ------------------------------------------------------------------------


def start_servers() -> Servers:
    """The three private redis-servers (killed at exit by infra)."""
    root = infra.workdir()
    urls = {}
    for name, port in PORTS.items():
        wd = root / name
        wd.mkdir()
        _, urls[name] = infra.private_redis(port, wd)
    print(f"private redis-servers {urls}; logs under {root}", flush=True)
    return Servers(urls, *(redis.Redis.from_url(urls[k]) for k in ("reliable", "broker", "backend")))


def start_worker(node: str, pool: str, concurrency: int, servers: Servers, logdir: Path) -> subprocess.Popen[bytes]:
    """``celery -A bench.retry_app worker`` consuming only an idle queue of its own."""
    env = {**os.environ, "BENCH_RELIABLE_REDIS": servers.urls["reliable"], "BENCH_BROKER": servers.urls["broker"],
           "BENCH_BACKEND": servers.urls["backend"], "BENCH_DATABASE_URL": DB_URL}
    name = node.split("@")[0]
    cmd = [str(infra.ROOT / ".venv" / "bin" / "celery"), "-A", "bench.retry_app", "worker", "-P", pool,
           "-c", str(concurrency), "-n", node, "-Q", f"retry-idle-{name}", "-l", "warning",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return infra.spawn(cmd, logdir / f"{name}.log", env=env)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of one process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Worker:
    """A running bench worker and the runner's view of it."""

    node: str
    proc: subprocess.Popen[bytes]
    servers: Servers

    @property
    def name(self) -> str:
        return self.node.split("@")[0]

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stats(self, timeout: float = 15.0) -> dict[int, dict[str, Any]]:
        """Every worker process's cumulative figures, each written after this call started."""
        since = time.time()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            raw = self.servers.backend.mget([f"retry:stats:{p}" for p in pids])
            got = {p: json.loads(r) for p, r in zip(pids, raw, strict=True) if r is not None}
            if len(got) == len(pids) and all(s["t"] > since for s in got.values()):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.node}: no fresh figures from {set(pids) - set(got)}")
            time.sleep(0.05)

    def control(self, method: str, queue: str) -> None:
        from .retry_app import app

        replies = getattr(app.control, method)(queue, destination=[self.node], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"{method}({queue}) got no reply from {self.node}")


def launch(node: str, pool: str, concurrency: int, servers: Servers, logdir: Path) -> Worker:
    from .retry_app import app

    proc = start_worker(node, pool, concurrency, servers, logdir)
    infra.wait_ready(app, node, proc)
    return Worker(node, proc, servers)


# -- step 1: commands per retry, retries/s ---------------------------------------------


def _sum(stats: dict[int, dict[str, Any]], part: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in stats.values():
        total.update(s[part])
    return total


def _wait(cond: Any, what: str, timeout: float) -> float:
    """Poll ``cond`` until true; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def _wait_final(backend: redis.Redis, ids: list[str], state: str, timeout: float) -> None:
    keys = [META + i for i in ids]
    deadline = time.monotonic() + timeout
    while True:
        done = 0
        for i in range(0, len(keys), 1000):
            for raw in backend.mget(keys[i:i + 1000]):
                if raw is not None:
                    status = json.loads(raw)["status"]
                    if status == state:
                        done += 1
                    elif status not in ("RETRY", "STARTED", "PENDING"):
                        raise RuntimeError(f"a task ended {status}, expected {state}: {raw[:300]!r}")
        if done == len(keys):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{len(keys)} tasks reached {state} in {timeout:.0f} s")
        time.sleep(0.1)


def _attempt_figures(rows: list[list[Any]]) -> tuple[float, float, tuple[float, float]]:
    """Span (s), median gap between attempt starts per process (ms), and waits between attempts (ms)."""
    by_pid: dict[int, list[float]] = {}
    by_task: dict[str, list[list[Any]]] = {}
    for pid, task_id, retries, pre, post in rows:
        by_pid.setdefault(pid, []).append(pre)
        by_task.setdefault(task_id, []).append([retries, pre, post])
    gaps = [(b - a) * 1000 for starts in by_pid.values() for a, b in itertools.pairwise(sorted(starts))]
    waits = [(b[1] - a[2]) * 1000 for tries in by_task.values() for a, b in itertools.pairwise(sorted(tries))]
    span = max(r[4] for r in rows) - min(r[3] for r in rows)
    return span, statistics.median(gaps), (pct(waits, 0.5), pct(waits, 0.9)) if waits else (0.0, 0.0)


def run_rep(w: Worker, kind: str, n: int, tag: str) -> Rep:
    """Publish ``n`` tasks of ``kind`` to a fresh queue, let the worker take them to their end."""
    from .retry_app import ATTEMPTS_KEY, TASKS, app

    task = TASKS[kind]
    queue = f"retry-{w.name}-{kind}-{tag}"
    with app.producer_or_acquire() as producer:
        ids = [task.apply_async((i, order(i)), queue=queue, producer=producer).id for i in range(n)]
    before = w.stats()
    w.servers.broker.config_resetstat()
    w.servers.reliable.config_resetstat()
    w.control("add_consumer", queue)
    failing = kind.endswith("_fail")
    _wait_final(w.servers.backend, ids, "FAILURE" if failing else "SUCCESS", timeout=max(60.0, n / 5))
    expected = n * (ATTEMPTS if failing else 1)
    key = ATTEMPTS_KEY + queue
    _wait(lambda: w.servers.backend.llen(key) >= expected, f"{kind}: attempts not all recorded", 15)
    w.control("cancel_consumer", queue)
    broker_calls, reliable_calls = commandstats(w.servers.broker), commandstats(w.servers.reliable)
    after = w.stats()
    rows = [json.loads(x) for x in w.servers.backend.lrange(key, 0, -1)]
    tries = Counter(r[2] for r in rows)
    if len(rows) != expected or tries != Counter({k: n for k in range(expected // n)}):
        raise RuntimeError(f"{kind}: {len(rows)} attempts seen ({dict(tries)} by retries), {expected} expected")
    counts, mine = _sum(after, "counts"), _sum(after, "mine")
    counts.subtract(_sum(before, "counts"))
    mine.subtract(_sum(before, "mine"))
    span, attempt_ms, wait_ms = _attempt_figures(rows)
    return Rep(kind, n, len(rows), span, attempt_ms, wait_ms, reliable_calls, broker_calls,
               {k: v for k, v in counts.items() if not k.startswith("sql_") and v},
               {k: v for k, v in mine.items() if v}, {k: v for k, v in counts.items() if k.startswith("sql_") and v})


@dataclass
class PoolResult:
    """Step 1 on one worker."""

    pool: str
    base: dict[str, Rep] = field(default_factory=dict)
    timed: dict[str, list[Rep]] = field(default_factory=dict)
    idle: dict[str, Rep] = field(default_factory=dict)


def retry_step(plan: Plan, servers: Servers, logdir: Path) -> list[PoolResult]:
    """Step 1 for each pool."""
    out = []
    kinds = ("plain_fail", "reliable_fail")
    for pool, conc in POOLS:
        w = launch(f"retry-{pool}@localhost", pool, conc, servers, logdir)
        try:
            for kind in (*kinds, "plain_ok", "reliable_ok"):
                run_rep(w, kind, plan.warmup, "warm")
            res = PoolResult(pool, timed={k: [] for k in kinds})
            for kind in ("plain_ok", "reliable_ok"):
                res.base[kind] = run_rep(w, kind, plan.n, "base")
            for rep in range(plan.reps):
                for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                    r = run_rep(w, kind, plan.n, f"t{rep}")
                    res.timed[kind].append(r)
                    print(f"  {pool:8} {kind:14} rep {rep + 1}/{plan.reps}: {r.rate:7.1f} retries/s, "
                          f"{r.seconds:.2f} s", flush=True)
            for kind in kinds:  # low load: the waits between attempts are the retry path's own
                res.idle[kind] = run_rep(w, kind, plan.idle_n, "idle")
            out.append(res)
        finally:
            infra.stop(w.proc)
    return out


def per_retry(reps: list[Rep], base: Rep, attr: str) -> dict[str, float]:
    """Median over reps of (calls - baseline calls scaled to n) / retries, per command and ``total``."""
    names = sorted({k for r in reps for k in getattr(r, attr)} | set(getattr(base, attr)))
    per: dict[str, float] = {}
    for k in names:
        per[k] = statistics.median((getattr(r, attr).get(k, 0) - getattr(base, attr).get(k, 0) * r.n / base.n)
                                   / r.retries for r in reps)
    per["total"] = statistics.median((sum(getattr(r, attr).values()) - sum(getattr(base, attr).values()) * r.n / base.n)
                                     / r.retries for r in reps)
    return per


def fmt_calls(per: dict[str, float], limit: float = 0.005) -> str:
    """``5.03 (evalsha 1.02, zadd 1.00, ...)``."""
    parts = [(k, v) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if k != "total" and abs(v) >= limit]
    detail = ", ".join(f"{k.removeprefix('redis_cmd:').lower()} {v:.2f}" for k, v in parts)
    return f"{per['total']:.2f}" + (f" ({detail})" if detail else "")


def retry_report(results: list[PoolResult]) -> str:
    """The step 1 tables."""
    speed: list[list[object]] = []
    work: list[list[object]] = []
    for res in results:
        plain, rel = res.timed["plain_fail"], res.timed["reliable_fail"]
        pr, rr = statistics.median(r.rate for r in plain), statistics.median(r.rate for r in rel)
        ratios = [b.rate / a.rate for a, b in zip(plain, rel, strict=True)]

        def med(reps: list[Rep], f: Any) -> float:
            return statistics.median(f(r) for r in reps)

        ip, ir = res.idle["plain_fail"].wait_ms, res.idle["reliable_fail"].wait_ms
        speed.append([res.pool, f"{pr:.0f}", f"{rr:.0f}", f"{rr / pr:.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}",
                      f"{med(plain, lambda r: r.attempt_ms):.2f} / {med(rel, lambda r: r.attempt_ms):.2f}",
                      f"{ip[0]:.0f} ({ip[1]:.0f}) / {ir[0]:.0f} ({ir[1]:.0f})"])
        for kind, reps, base in (("plain `self.retry(countdown)`", plain, res.base["plain_ok"]),
                                 ("reliable `retry_policy`", rel, res.base["reliable_ok"])):
            client = per_retry(reps, base, "counts")
            trips = client.pop("redis_round_trips", 0.0)
            sent = {k: v for k, v in client.items() if k.startswith("redis_cmd:")}
            sent["total"] = sum(sent.values())
            reliable = "reliable" in kind
            parks = med(reps, lambda r: r.mine.get("parks", 0) / r.retries)
            moved = med(reps, lambda r: r.mine.get("pump_moved", 0) / max(1, r.mine.get("pump_steps_moving", 0)))
            work.append([res.pool, kind, f"{trips:.2f}", fmt_calls(sent),
                         fmt_calls(per_retry(reps, base, "reliable_calls")),
                         fmt_calls(per_retry(reps, base, "broker_calls")),
                         f"{parks:.3f}" if reliable else "-", f"{moved:.0f}" if reliable else "-"])
    return "\n".join([
        table(("pool", "plain retries/s", "reliable retries/s", "ratio", "per-pair ratios",
               "worker ms per attempt, plain / reliable",
               "wait between attempts at low load, ms p50 (p90), plain / reliable"),
              speed), "",
        table(("pool", "retry path", "round trips to reliable Redis", "commands sent to reliable Redis",
               "reliable Redis commandstats calls (incl. inside Lua)", "broker commandstats calls",
               "parked per retry", "entries per pump step"), work)])


# -- step 2: dead-letter inserts --------------------------------------------------------


@dataclass
class LetterResult:
    """Step 2."""

    new_per_s: list[float]
    dup_per_s: list[float]
    new_sql: dict[str, float]
    dup_sql: dict[str, float]
    letter_bytes: dict[str, int]


def _sql_counts() -> Counter[str]:
    from .retry_app import snapshot

    return Counter({k: v for k, v in snapshot()["counts"].items() if k.startswith("sql_")})


def dead_letter_step(plan: Plan, engine: Engine) -> LetterResult:
    """``DeadLetterStore.add``: new letters, then the same letters again."""
    import uuid

    from celery_reliable.clients import engine_for
    from celery_reliable.deadletter import DeadLetterStore

    template = DeadLetterStore(engine).list(limit=1)
    if not template:
        raise RuntimeError("no dead letter stored by the workers to copy")
    letter = template[0]
    sizes = {"args+kwargs": len(json.dumps([letter.args, letter.kwargs])), "headers": len(json.dumps(letter.headers)),
             "history": len(json.dumps(letter.history)), "traceback": len(letter.traceback or "")}
    store = DeadLetterStore(engine_for(DB_URL))
    store.add(replace(letter, dedup_key="warm", task_id="warm", id=None, created_at=None))  # pool, statement cache
    res = LetterResult([], [], {}, {}, sizes)
    new_sql: list[Counter[str]] = []
    dup_sql: list[Counter[str]] = []
    for rep in range(plan.dl_reps):
        batch = []
        for _ in range(plan.dl_n):
            tid = str(uuid.uuid4())
            batch.append(replace(letter, dedup_key=tid, task_id=tid, id=None, created_at=None))
        for phase, want, rates, sql in (("new", True, res.new_per_s, new_sql), ("dup", False, res.dup_per_s, dup_sql)):
            c0 = _sql_counts()
            t0 = time.perf_counter()
            for one in batch:
                if store.add(one)[1] is not want:
                    raise RuntimeError(f"{phase} add: created is not {want}")
            rates.append(plan.dl_n / (time.perf_counter() - t0))
            c1 = _sql_counts()
            c1.subtract(c0)
            sql.append(c1)
        print(f"  dead letters rep {rep + 1}/{plan.dl_reps}: {res.new_per_s[-1]:.0f} new/s, "
              f"{res.dup_per_s[-1]:.0f} duplicate/s", flush=True)
    n = plan.dl_n * plan.dl_reps
    res.new_sql = {k: v / n for k, v in sum(new_sql, Counter()).items()}
    res.dup_sql = {k: v / n for k, v in sum(dup_sql, Counter()).items()}
    return res


def letter_report(res: LetterResult, pg_commit_us: float) -> str:
    def sql(d: dict[str, float]) -> str:
        return ", ".join(f"{k.removeprefix('sql_')} {v:g}" for k, v in sorted(d.items()) if v)

    rows = []
    for label, rates, counts in (("new letter", res.new_per_s, res.new_sql), ("duplicate (same dedup_key)",
                                                                             res.dup_per_s, res.dup_sql)):
        med = statistics.median(rates)
        rows.append([label, f"{med:.0f}", f"{1e6 / med:.0f}", f"{min(rates):.0f}-{max(rates):.0f}", sql(counts)])
    sizes = ", ".join(f"{k} {v} B" for k, v in res.letter_bytes.items())
    return "\n".join([table(("add()", "letters/s", "us/letter", "range over reps", "per add"), rows), "",
                      f"Letter copied from step 1: {sizes}. One-row INSERT + COMMIT on this database: "
                      f"{pg_commit_us:.0f} us median."])


# -- step 3: memory ---------------------------------------------------------------------


@dataclass
class MemoryResult:
    """Step 3."""

    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> process -> KiB
    parked: int = 0  # reliable retries parked by the runner
    held: int = 0  # plain ETA retries held by the worker
    reliable_bytes: int = 0  # used_memory delta of the reliable Redis for the parked bulk
    broker_bytes: int = 0  # used_memory delta of the broker for the held bulk
    sample_bytes: dict[str, float] = field(default_factory=dict)  # per retry, for the worker-made sample
    entry_len: dict[str, float] = field(default_factory=dict)  # stored bytes per retry, mean of a sample
    park_s: float = 0.0  # runner's apply_async for the reliable bulk
    eta_publish_s: float = 0.0  # runner's apply_async for the plain bulk
    eta_intake_s: float = 0.0  # worker fetching and holding the plain bulk


def _rss(w: Worker) -> dict[str, int]:
    pids = w.pids()
    out = {"main": rss_kib(pids[0])}
    for i, p in enumerate(sorted(pids[1:])):
        out[f"child {i + 1}"] = rss_kib(p)
    out["total"] = sum(out.values())
    return out


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _plain_n(value: bytes) -> int:
    """The first argument of the task in a kombu Redis ``unacked`` hash value."""
    message = json.loads(value)[0]
    return int(json.loads(base64.b64decode(message["body"]))[0][0])


SAMPLE_BASE = 10_000_000  # first argument of the sample tasks, apart from the bulk's


def memory_step(plan: Plan, servers: Servers, logdir: Path) -> MemoryResult:
    """Step 3: RSS and Redis memory with ``park_n`` reliable and ``eta_n`` plain retries waiting 1 h."""
    from .retry_app import TASKS, app

    res = MemoryResult()
    w = launch("retry-mem@localhost", "prefork", 2, servers, logdir)
    due = "rretry:{deferred}:due"
    park_q, eta_q = "retry-mem-park", "retry-mem-eta"
    rel, broker = servers.reliable, servers.broker
    try:
        run_rep(w, "plain_ok", 50, "mem-warm")  # children import, connect, run tasks
        run_rep(w, "reliable_ok", 50, "mem-warm")
        w.control("add_consumer", park_q)
        time.sleep(1.0)
        res.rss["before"] = _rss(w)

        # Reliable: the call Celery's retry makes, from the runner (nothing runs in the worker).
        mem0 = _used(rel)
        t0 = time.perf_counter()
        for i in range(plan.park_n):
            TASKS["reliable_park"].apply_async((i, order(i)), queue=park_q, retries=1, countdown=3600)
        res.park_s = time.perf_counter() - t0
        res.parked = int(rel.zcard(due))
        res.reliable_bytes = _used(rel) - mem0
        res.entry_len["reliable, `apply_async(retries=1, countdown=3600)`"] = statistics.mean(
            map(len, rel.zrandmember(due, 500) or []))
        time.sleep(2.0)  # a few pump steps over the parked set
        res.rss[f"{res.parked // 1000}k reliable parked"] = _rss(w)

        # Plain: the same ETA message from the runner; the worker fetches and holds every one.
        bmem0 = _used(broker)
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(plan.eta_n):
                TASKS["plain_eta"].apply_async((i, order(i)), queue=eta_q, producer=producer, retries=1,
                                               countdown=3600)
        res.eta_publish_s = time.perf_counter() - t0
        w.control("add_consumer", eta_q)
        res.eta_intake_s = _wait(lambda: broker.llen(eta_q) == 0 and broker.hlen("unacked") >= plan.eta_n,
                                 "the worker did not take every ETA message", 600)
        time.sleep(2.0)
        res.held = int(broker.hlen("unacked"))
        res.broker_bytes = _used(broker) - bmem0
        vals = broker.hrandfield("unacked", 500, withvalues=True) or []
        res.entry_len["plain, `apply_async(retries=1, countdown=3600)` (`unacked` hash value)"] = statistics.mean(
            map(len, vals[1::2]))
        res.rss[f"+ {res.held // 1000}k plain ETA held"] = _rss(w)

        # The samples: failing tasks in the worker make the same retries (checks the bulk is representative).
        mem0, bmem0 = _used(rel), _used(broker)
        with app.producer_or_acquire() as producer:
            ids = [TASKS["reliable_park"].apply_async((SAMPLE_BASE + i, order(i)), queue=park_q, producer=producer).id
                   for i in range(plan.sample)]
            ids += [TASKS["plain_eta"].apply_async((SAMPLE_BASE + i, order(i)), queue=eta_q, producer=producer).id
                    for i in range(plan.sample)]
        _wait_final(servers.backend, ids, "RETRY", timeout=120)
        _wait(lambda: rel.zcard(due) == res.parked + plan.sample and broker.llen(eta_q) == 0
              and broker.hlen("unacked") == res.held + plan.sample, "the samples did not settle", 60)
        time.sleep(1.0)
        res.sample_bytes = {"reliable": (_used(rel) - mem0) / plan.sample,
                            "plain": (_used(broker) - bmem0) / plan.sample}
        res.entry_len["reliable, parked by the worker (`self.retry`)"] = statistics.mean(
            map(len, rel.zrange(due, -plan.sample, -1)))
        vals = broker.hrandfield("unacked", 4000, withvalues=True) or []
        mine = [len(v) for v in vals[1::2] if _plain_n(v) >= SAMPLE_BASE]
        res.entry_len["plain, sent by the worker (`self.retry`)"] = statistics.mean(mine)
        res.rss[f"+ samples ({plan.sample} failing tasks of each kind ran)"] = _rss(w)
    finally:
        infra.stop(w.proc)
    return res


def memory_report(res: MemoryResult, plan: Plan) -> str:
    """The step 3 tables."""
    stages = list(res.rss)
    roles = list(res.rss[stages[0]])
    rows = [[role, *(f"{res.rss[s].get(role, 0) / 1024:.1f}" for s in stages)] for role in roles]
    (b, r, p), main = (res.rss[s]["total"] for s in stages[:3]), [res.rss[s]["main"] for s in stages[:3]]
    mib = 2**20
    lines = [
        table(("worker process, VmRSS MiB", *stages), rows), "",
        table(("retries waiting 1 h", "count", "worker RSS delta, all processes", "main process delta",
               "worker bytes per retry", "Redis used_memory delta", "Redis bytes per retry",
               f"Redis bytes per retry, {plan.sample} made by failing tasks"),
              [["celery-reliable, deferred set", f"{res.parked:,}", f"{(r - b) / 1024:+.1f} MiB",
                f"{(main[1] - main[0]) / 1024:+.1f} MiB", f"{(r - b) * 1024 / res.parked:+.0f}",
                f"{res.reliable_bytes / mib:.1f} MiB (reliable Redis)", f"{res.reliable_bytes / res.parked:.0f}",
                f"{res.sample_bytes['reliable']:.0f}"],
               ["plain Celery, ETA messages", f"{res.held:,}", f"{(p - r) / 1024:+.1f} MiB",
                f"{(main[2] - main[1]) / 1024:+.1f} MiB", f"{(p - r) * 1024 / res.held:+.0f}",
                f"{res.broker_bytes / mib:.1f} MiB (broker)", f"{res.broker_bytes / res.held:.0f}",
                f"{res.sample_bytes['plain']:.0f}"]]), "",
        "Stored bytes of one waiting retry (mean of a sample): "
        + "; ".join(f"{k}: {v:.0f}" for k, v in res.entry_len.items()) + ".",
        f"Runner time: {plan.park_n:,} reliable `apply_async(retries=1, countdown=3600)` {res.park_s:.1f} s; "
        f"{plan.eta_n:,} plain ETA publishes {res.eta_publish_s:.1f} s, then the worker took "
        f"{res.eta_intake_s:.1f} s to fetch and hold them."]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


def check_letters(engine: Engine, expected: int) -> str:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT reason, attempts, count(*) FROM reliable_dead_letters "
                                 "WHERE task_name = 'retry.reliable_fail' GROUP BY reason, attempts")).all()
    found = {(r[0], r[1]): r[2] for r in rows}
    ok = found == {("exhausted", ATTEMPTS): expected}
    verdict = "ok" if ok else "WRONG"
    return f"dead letters from step 1: {found}, expected {expected} x ('exhausted', {ATTEMPTS}): {verdict}"


def main(argv: list[str] | None = None) -> int:
    """Run the three steps and print the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.retries", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, about 1.5 minutes")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    try:
        servers = start_servers()
        os.environ.update(BENCH_RELIABLE_REDIS=servers.urls["reliable"], BENCH_BROKER=servers.urls["broker"],
                          BENCH_BACKEND=servers.urls["backend"], BENCH_DATABASE_URL=DB_URL)
        engine = infra.prepare_database(DB_URL)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE reliable_dead_letters"))
        from .run import _pg_us, _redis_rtt_us

        rtt = _redis_rtt_us(servers.reliable)
        _, pg_commit_us = _pg_us(engine)
        logdir = infra.workdir()
        print(f"worker logs in {logdir}", flush=True)
        retry_results = retry_step(plan, servers, logdir)
        letters_check = check_letters(engine, len(POOLS) * (plan.warmup + plan.n * plan.reps + plan.idle_n))
        print(letters_check, flush=True)
        letters = dead_letter_step(plan, engine)
        memory = memory_step(plan, servers, logdir)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=infra.ROOT, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_reliable"], cwd=infra.ROOT,
                               capture_output=True, text=True).stdout.strip()
        took = time.monotonic() - started
        meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": commit + (" + uncommitted changes in celery_reliable/" if dirty else ""),
                "command": ".venv/bin/python -m bench.retries" + (" --quick" if args.quick else ""),
                "took_s": round(took), "plan": asdict(plan),
                "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
                           f"redis-py {redis.__version__}",
                "redis_rtt_us": round(rtt), "pg_commit_us": round(pg_commit_us)}
        print()
        print(f"Run {meta['date']}, tree at `{meta['commit']}` (`{meta['command']}`, {meta['took_s']} s). "
              f"{meta['machine']}; Redis PING median {rtt:.0f} us.")
        print()
        print(f"### 1. Retries: {plan.n} tasks x {ATTEMPTS} attempts ({plan.n * (ATTEMPTS - 1)} retries) per rep, "
              f"median of {plan.reps} reps, plain and reliable interleaved on the same worker")
        print()
        print(retry_report(retry_results))
        print()
        print(letters_check)
        print()
        print(f"### 2. Dead-letter store, {plan.dl_n} letters per rep, median of {plan.dl_reps} reps, one thread")
        print()
        print(letter_report(letters, pg_commit_us))
        print()
        print(f"### 3. Memory with retries waiting on a 1 h backoff (`-P prefork -c 2`; {plan.sample} of each sent "
              "by failing tasks in the worker)")
        print()
        print(memory_report(memory, plan))
        out = args.json or logdir / "retries.json"
        out.write_text(json.dumps({"meta": meta, "retries": [asdict(r) for r in retry_results],
                                   "letters": asdict(letters), "memory": asdict(memory)}, default=str))
        print(f"\nraw figures: {out}; took {time.monotonic() - started:.0f} s")
    finally:
        infra.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
