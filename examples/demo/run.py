"""The demo's conductor: stores, a worker per bulkhead tier, beat, Flower, six phases of faults, an audit.

Run from the repository root::

    python -m examples.demo                 # private redis-server + SQLite in a temp dir
    DEMO_DATABASE_URL=postgresql://root@127.0.0.1/test python -m examples.demo

Redis: a private ``redis-server`` on a free port when one is on ``PATH`` (so the demo
never touches your data), else ``DEMO_REDIS_URL`` (default ``redis://127.0.0.1:6379/8``),
where every key it writes carries this run's prefix and is deleted at the end.
Database: ``DEMO_DATABASE_URL`` if set, else SQLite in a temporary directory.

Processes: ``celery worker`` ``critical-1`` and ``critical-2`` (queue ``critical``) and
``standard-1`` (queues ``standard`` and ``optional``), ``celery beat`` (celery-reliable's
``LeaderScheduler``: outbox relay, pump, cleanups) and ``celery flower``.

Phases: (1) payments with duplicates and SIGKILLed workers, (2) a singleton job triggered
many times at once plus the optional tier's bulkhead, (3) a dependency outage behind a
circuit breaker, (4) a global rate limit over both workers, (5) dead letters and replay,
(6) the transactional outbox with rolled-back transactions. Then the audit table.

When stdout is a terminal (or with ``--stay``) the workers, beat and Flower keep running
after the audit until Ctrl-C, so you can look around in Flower; otherwise (or with
``--no-stay``) everything stops. Exit status: 0 when every guarantee held, 1 when one did
not, 2 when the demo could not set itself up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine, make_url

from celery_reliable import DeadLetter, DeadLetterStore

from . import phases
from .measure import Metrics, hash_counts, text
from .procs import Processes, free_port, wait_for_redis
from .report import PhaseAudit, render

APP = "examples.demo.app"
FAILPOINTS = ("after_claim", "before_commit", "after_commit", "before_ack")
#: The workers at start: name -> its tier (``standard`` also consumes the ``optional`` queue).
WORKERS = {"critical-1": "critical", "critical-2": "critical", "standard-1": "standard"}
#: Celery's own task events (Flower counts them too; the audit shows only celery-reliable's decisions).
PLAIN_EVENTS = frozenset(
    {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
    }
)
#: Pool size per tier's worker.
POOL = {"critical": 2, "standard": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=200, help="phase 1: orders to charge (default 200)")
    parser.add_argument(
        "--reports",
        type=int,
        default=10,
        help="phase 2: concurrent triggers of the singleton job, and of the optional task (default 10)",
    )
    parser.add_argument("--rates", type=int, default=16, help="phase 3: tasks behind the breaker (default 16)")
    parser.add_argument(
        "--partner-calls", type=int, default=60, help="phase 4: rate-limited calls, 10/s over both workers (default 60)"
    )
    parser.add_argument(
        "--failing",
        type=int,
        default=4,
        help="phase 5: tasks that exhaust their retries (and half as many permanent failures)",
    )
    parser.add_argument("--outbox", type=int, default=20, help="phase 6: business transactions (default 20)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for phase 1's work")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the payments workload")
    parser.add_argument(
        "--failpoint",
        default="after_commit",
        choices=(*FAILPOINTS, "none"),
        help="the replacement critical worker also SIGKILLs itself at this point once per task "
        "(default after_commit: effect committed, result not stored, message not acked)",
    )
    parser.add_argument(
        "--unprotected",
        action="store_true",
        help="charge with a plain Celery task instead, to see what celery-reliable prevents",
    )
    parser.add_argument("--flower-port", type=int, default=0, help="Flower's port (default: a free one)")
    stay = parser.add_mutually_exclusive_group()
    stay.add_argument(
        "--stay",
        dest="stay",
        action="store_true",
        default=None,
        help="keep the workers, beat and Flower running after the audit until Ctrl-C "
        "(the default when stdout is a terminal)",
    )
    stay.add_argument("--no-stay", dest="stay", action="store_false", help="stop everything after the audit")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite file)")
    parser.add_argument("--beat", action="store_true", help=argparse.SUPPRESS)  # beat always runs now
    args = parser.parse_args(argv)
    if args.failpoint == "none":
        args.failpoint = None
    if args.stay is None:
        args.stay = sys.stdout.isatty()
    return args


def database_url(tmp: Path) -> str:
    """``DEMO_DATABASE_URL`` (psycopg 3 driver filled in), else a SQLite file in ``tmp``."""
    url = os.environ.get("DEMO_DATABASE_URL", "").strip()
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain) :]
    return url or f"sqlite:///{tmp / 'demo.sqlite'}"


def masked(url: str) -> str:
    """``url`` with its password hidden, for printing."""
    return make_url(url).render_as_string(hide_password=True)


class Demo:
    """One run of the demo; :meth:`run` returns the exit status."""

    def __init__(self, args: argparse.Namespace, procs: Processes, tmp: Path) -> None:
        self.args = args
        self.procs = procs
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:8]
        self.started = time.monotonic()
        self.failpoint_fired = 0
        self.private = False
        self.env: dict[str, str] = {}
        self.app: Any = None  # the examples.demo.app module, imported once the environment is set
        self._engine: Engine | None = None
        self._ledger: redis.Redis | None = None
        self._reliable: redis.Redis | None = None
        self.metrics = Metrics()
        self.dead: set[str] = set()
        self.notes: list[str] = []
        self.current = 0
        self.flower_url = ""
        self.task_ids: set[str] = set()  # phase 1's, for the failpoints' own keys

    # -- output ------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """Print a progress line stamped with the seconds since start (and the current phase)."""
        where = f"[phase {self.current}] " if self.current else ""
        print(f"[{time.monotonic() - self.started:5.1f}s] {where}{message}", flush=True)

    def phase(self, audit: PhaseAudit, what: str) -> None:
        """Announce a phase."""
        self.current = 0
        self.say(f"=== phase {audit.number}: {audit.title}: {what}")
        self.current = audit.number

    def fault(self, audit: PhaseAudit, message: str) -> None:
        """Record and print a fault that fired (the tests parse these lines)."""
        audit.faults.append(message)
        self.say(f"fault fired: {message}")

    # -- stores ------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The demo's engine on the database the workers use."""
        assert self._engine is not None
        return self._engine

    def ledger(self) -> redis.Redis:
        """The client for the ledger Redis."""
        if self._ledger is None:
            self._ledger = redis.Redis.from_url(self.env["DEMO_LEDGER"])
        return self._ledger

    def reliable_redis(self) -> redis.Redis:
        """The client for the Redis celery-reliable keeps its state in."""
        if self._reliable is None:
            self._reliable = redis.Redis.from_url(self.env["DEMO_RELIABLE_REDIS"])
        return self._reliable

    def setup(self) -> None:
        """Start Redis, point the app at the stores, run the migrations."""
        from celery_reliable.migrate import upgrade

        if shutil.which("redis-server"):
            base = self.procs.redis_server()
            self.private = True
            urls = [f"{base}/{db}" for db in range(4)]
            self.say(f"redis: private redis-server at {base} (memory only, noeviction)")
        else:
            url = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/8")
            if not wait_for_redis(url, 3):
                raise RuntimeError(f"no redis-server on PATH and {masked(url)} does not answer")
            urls = [url] * 4
            self.say(f"redis: {masked(url)} (every key prefixed demo-{self.run_id}:, removed at the end)")
        db_url = database_url(self.tmp)
        self.env = {
            "DEMO_BROKER": urls[0],
            "DEMO_BACKEND": urls[1],
            "DEMO_RELIABLE_REDIS": urls[2],
            "DEMO_LEDGER": urls[3],
            "DEMO_DB": db_url,
            "DEMO_RUN": self.run_id,
        }
        os.environ.update(self.env)
        self.app = importlib.import_module(APP)
        self._engine = create_engine(db_url, connect_args={"timeout": 30} if db_url.startswith("sqlite") else {})
        upgrade(self.engine)
        self.app.metadata.create_all(self.engine)
        self.say(f"database: {masked(db_url)} (migrated; demo_payments and demo_receipts have no unique constraint)")

    # -- processes ---------------------------------------------------------------------------

    def start_worker(self, name: str, tier: str, extra: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start a ``celery worker`` for ``tier``'s queues, with its own metrics port."""
        port = free_port()
        queues = [self.app.QUEUES[t] for t in (["standard", "optional"] if tier == "standard" else [tier])]
        self.procs.worker(name, APP, queues, POOL[tier], {**self.env, "DEMO_METRICS_PORT": str(port), **(extra or {})})
        self.metrics.add(name, port)
        if wait:
            self.wait_ready([name])

    def wait_ready(self, names: list[str]) -> None:
        """Wait until the workers ``names`` report ready."""
        deadline = time.monotonic() + 60
        while True:
            ready = {text(m).split("@")[0] for m in self.ledger().smembers(self.app.ledger_key("ready"))}
            if set(names) <= ready:
                return
            dead = [n for n in names if self.procs.started[n].poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"worker {dead or names} did not start:\n{self.procs.log_tail((dead or names)[0])}")
            time.sleep(0.1)

    def start_processes(self) -> None:
        """The workers (one per tier), beat and Flower."""
        for name, tier in WORKERS.items():
            self.start_worker(name, tier, wait=False)
        self.procs.beat(APP, self.tmp / "beat-schedule", self.env)
        port = self.args.flower_port or free_port()
        self.procs.flower(APP, port, self.env)
        self.wait_ready(list(WORKERS))
        tiers = ", ".join(f"{t} {n}" for t, n in self.app.BULKHEADS.items())
        self.say(
            f"workers ready: critical-1 and critical-2 (queue critical, -c {POOL['critical']} each), standard-1 "
            f"(queues standard + optional, -c {POOL['standard']}); reliable_bulkheads: {tiers}"
        )
        self.say("beat: celery beat with celery_reliable's LeaderScheduler (outbox relay every 1 s, pump, cleanups)")
        self.flower_url = f"http://127.0.0.1:{port}"
        if self.wait_http(self.flower_url + "/healthcheck", 30):
            self.say(f"Flower: {self.flower_url}  (tasks, workers, and every reliability decision as an event)")
        else:
            self.notes.append(f"Flower did not answer at {self.flower_url}; see {self.tmp / 'flower.log'}")
            self.say(f"Flower did not answer at {self.flower_url} (log: {self.tmp / 'flower.log'})")

    @staticmethod
    def wait_http(url: str, timeout: float) -> bool:
        """Whether ``url`` answers within ``timeout`` seconds."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except OSError:
                time.sleep(0.3)
        return False

    def live_workers(self) -> list[str]:
        """The workers started and not SIGKILLed."""
        return [n for n in self.metrics.ports if n not in self.dead]

    # -- counts ------------------------------------------------------------------------------

    def count(self, kind: str, *task_names: str) -> int:
        """The ledger's ``kind`` count (deliveries, bodies, retried) of the tasks ``task_names``."""
        values = self.ledger().hmget(self.app.ledger_key(kind), [self.app.short(n) for n in task_names])
        return sum(int(v or 0) for v in values)

    def deferred(self, audit: PhaseAudit) -> Counter[str]:
        """The phase's tasks' deferrals by reason, from the workers' counters; kept in ``audit``."""
        totals = self.metrics.totals(self.live_workers())
        audit.deferred = Metrics.by_reason(totals, "reliable_deferred_total", audit.tasks)
        return audit.deferred

    def parked_reasons(self) -> dict[str, int]:
        """Why the tasks parked right now were parked (``reliable status``'s deferred section)."""
        from celery_reliable.status import parking

        found = parking.deferred(self.reliable_redis(), self.app.PREFIX)
        return dict(found.get("reasons") or {})

    def letter_rows(self, task_name: str) -> list[DeadLetter]:
        """This run's dead letters of ``task_name`` (their queue carries the run's prefix)."""
        store = DeadLetterStore(self.engine)
        letters = store.list(task=task_name, limit=10_000)
        return [letter for letter in letters if (letter.queue or "").startswith(self.app.PREFIX)]

    def letters(self, task_name: str) -> Counter[str]:
        """This run's dead letters of ``task_name`` by reason."""
        return Counter(letter.reason for letter in self.letter_rows(task_name))

    def receipts(self) -> tuple[int, Counter[str]]:
        """Receipts sent in this run: how many, and per order."""
        table = self.app.receipts
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.order_id).where(table.c.run_id == self.run_id)).scalars().all()
        return len(rows), Counter(rows)

    def backlog(self) -> dict[str, int]:
        """What is still waiting: queued, unacked (delivered, not acked), and parked (deferred set)."""
        from celery_reliable.runtime import runtime

        broker = redis.Redis.from_url(self.env["DEMO_BROKER"])
        try:
            prefix = f"{self.app.PREFIX}:"
            queued = sum(broker.llen(prefix + q) for q in self.app.QUEUES.values())
            unacked = broker.hlen(prefix + "unacked")
        finally:
            broker.close()
        sizes = runtime(self.app.app).deferred().sizes()
        return {"queued": queued, "unacked": unacked, "parked": sizes["due"], "pumping": sizes["inflight"]}

    def wait_results(self, results: Sequence[Any], timeout: float, what: str) -> Counter[str]:
        """Wait until every result is ready (or ``timeout``); their states."""
        deadline = time.monotonic() + timeout
        next_status = time.monotonic() + 10
        pending = list(results)
        while pending and time.monotonic() < deadline:
            pending = [r for r in pending if not r.ready()]
            if pending and time.monotonic() > next_status:
                next_status += 10
                self.say(f"waiting for {what}: {len(pending)} unfinished, backlog {self.backlog()}")
            time.sleep(0.1)
        if pending:
            self.say(f"timed out waiting for {what}: {len(pending)} unfinished")
        return Counter(r.state for r in results)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> int:
        """Set up, run the phases, audit; the exit status."""
        self.setup()
        self.start_processes()
        audits: list[PhaseAudit] = []
        for step in (
            phases.payments,
            phases.singleton_and_bulkhead,
            phases.outage,
            phases.rate_limit,
            phases.dead_letters,
            phases.outbox,
        ):
            audit = step(self)
            self.current = audit.number
            verdict = "ok" if audit.ok else "NOT OK"
            self.say(f"phase {audit.number} {verdict}: " + "; ".join(c.text for c in audit.checks))
            audits.append(audit)
        self.current = 0
        extra = self.status_lines(audits[-1])
        text, ok = render(audits, time.monotonic() - self.started, extra)
        print(text, flush=True)
        for note in self.notes:
            print(f"  note: {note}", flush=True)
        return 0 if ok else 1

    def status_lines(self, last: PhaseAudit) -> list[str]:
        """Beat's maintenance runs (ledger) and ``reliable status`` of what celery-reliable still holds."""
        from celery_reliable import get_config
        from celery_reliable.status import gather

        runs = hash_counts(self.ledger(), self.app.ledger_key("deliveries"))
        maintenance = {k: v for k, v in runs.items() if k in self.app.MAINTENANCE}
        last.check(
            "beat (LeaderScheduler) ran the maintenance jobs: "
            + ", ".join(f"{k} {v}" for k, v in sorted(maintenance.items())),
            maintenance.get("relay_outbox", 0) > 0,
        )
        report = gather(self.app.app, get_config(self.app.app))
        deferred = report.get("deferred") or {}
        letters = report.get("dead_letters") or {}
        outbox = report.get("outbox") or {}
        breakers = {name: b.get("state") for name, b in (report.get("breakers") or {}).items() if isinstance(b, dict)}
        return [
            *self.flower_lines(),
            f"reliable status now: deferred due {deferred.get('due')}, in flight {deferred.get('inflight')}; "
            f"dead letters {letters}; outbox {outbox}; breakers {breakers}",
        ]

    def flower_lines(self) -> list[str]:
        """What Flower counted of the reliability decisions (its ``flower_events_total``), summed by type."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.flower_url + "/metrics", timeout=5) as response:
                text_ = response.read().decode()
        except OSError as exc:
            return [f"Flower's /metrics did not answer: {exc}"]
        seen: Counter[str] = Counter()
        for family in text_string_to_metric_families(text_):
            for sample in family.samples:
                kind = sample.labels.get("type", "")
                if sample.name == "flower_events_total" and kind.startswith("task-") and kind not in PLAIN_EVENTS:
                    seen[kind] += int(sample.value)
        return ["Flower saw these decisions as events: " + (", ".join(f"{k} {n}" for k, n in sorted(seen.items())))]

    def stay(self) -> None:
        """Keep everything running until Ctrl-C."""
        print(
            f"\nFlower: {self.flower_url}  -- workers, beat and Flower keep running; press Ctrl-C to stop.", flush=True
        )
        while True:
            time.sleep(3600)

    def cleanup(self) -> None:
        """Delete this run's keys when we used a shared Redis (a private one just stops)."""
        for client in (self._ledger, self._reliable):
            if client is not None:
                client.close()
        if self.private or not self.env:
            return
        client = redis.Redis.from_url(self.env["DEMO_LEDGER"])
        try:
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=f"demo-{self.run_id}:*", count=1000):
                pipe.delete(key)
            for tid in self.task_ids:  # the failpoints' own keys carry no prefix
                pipe.delete(*(f"failpoint:{point}:{tid}" for point in FAILPOINTS))
            if self.failpoint_fired:
                pipe.decrby(f"failpoint:{self.args.failpoint}:fired", self.failpoint_fired)
            pipe.execute()
        except redis.RedisError as exc:
            print(f"could not remove the demo's keys: {exc!r}", file=sys.stderr)
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    tmp = Path(tempfile.mkdtemp(prefix="celery-reliable-demo-"))
    procs = Processes(tmp)
    demo = Demo(args, procs, tmp)
    status = 2
    try:
        status = demo.run()
        if args.stay:
            demo.stay()
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        if status == 2:
            status = 130
    except Exception as exc:
        print(f"demo failed to run: {exc}", file=sys.stderr)
    finally:
        stopping = time.monotonic()
        procs.stop_all()
        demo.cleanup()
        print(f"stopped the demo's processes in {time.monotonic() - stopping:.1f} s", flush=True)
        if args.keep or status != 0:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status
