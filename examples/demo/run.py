"""The demo's conductor: stores, workers, a workload full of duplicates, SIGKILLs, a verdict.

Run from the repository root::

    python -m examples.demo                 # private redis-server + SQLite in a temp dir
    DEMO_DATABASE_URL=postgresql://root@127.0.0.1/test python -m examples.demo

Redis: a private ``redis-server`` on a free port when one is on ``PATH`` (so the demo
never touches your data), else ``DEMO_REDIS_URL`` (default ``redis://127.0.0.1:6379/8``),
where every key it writes carries this run's prefix and is deleted at the end.
Database: ``DEMO_DATABASE_URL`` if set, else SQLite in a temporary directory.
Exit status: 0 when every order was charged exactly once, 1 when not, 2 when the demo
could not set itself up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine, make_url

from .procs import Processes, children, wait_for_redis
from .report import Outcome, count_effects, render
from .workload import Message, workload

APP = "examples.demo.app"
FAILPOINTS = ("after_claim", "before_commit", "after_commit", "before_ack")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The demo's command line."""
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200, help="orders to charge (default 200)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes per worker")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the work")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the workload")
    parser.add_argument("--failpoint", default="after_commit", choices=(*FAILPOINTS, "none"),
                        help="the replacement worker also SIGKILLs itself at this point once per task "
                             "(default after_commit: effect committed, result not stored, message not acked)")
    parser.add_argument("--unprotected", action="store_true",
                        help="charge with a plain Celery task instead, to see what celery-reliable prevents")
    parser.add_argument("--beat", action="store_true", help="also run celery beat (maintenance jobs)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite file)")
    return parser.parse_args(argv)


def database_url(tmp: Path) -> str:
    """``DEMO_DATABASE_URL`` (psycopg 3 driver filled in), else a SQLite file in ``tmp``."""
    url = os.environ.get("DEMO_DATABASE_URL", "").strip()
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
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
        self.kills: list[str] = []
        self.killed = 0
        self.fired = 0
        self.task_ids: set[str] = set()
        self.private = False
        self.env: dict[str, str] = {}
        self.app: ModuleType | None = None
        self._ledger: redis.Redis | None = None

    def say(self, message: str) -> None:
        """Print a progress line stamped with the seconds since start."""
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", flush=True)

    def setup(self) -> Engine:
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
                raise RuntimeError(f"no redis-server on PATH and {url} does not answer")
            urls = [url] * 4
            self.say(f"redis: {masked(url)} (every key prefixed demo-{self.run_id}:, removed at the end)")
        db_url = database_url(self.tmp)
        self.env = {
            "DEMO_BROKER": urls[0], "DEMO_BACKEND": urls[1], "DEMO_RELIABLE_REDIS": urls[2],
            "DEMO_LEDGER": urls[3], "DEMO_DB": db_url, "DEMO_RUN": self.run_id,
        }
        os.environ.update(self.env)
        self.app = importlib.import_module(APP)
        engine = create_engine(db_url)
        upgrade(engine)
        self.app.metadata.create_all(engine)
        self.say(f"database: {masked(db_url)} (migrated; demo_payments has no unique constraint)")
        return engine

    def ledger(self) -> redis.Redis:
        """The client for the ledger Redis."""
        if self._ledger is None:
            self._ledger = redis.Redis.from_url(self.env["DEMO_LEDGER"])
        return self._ledger

    def start_workers(self, names: list[str]) -> None:
        """Start ``celery worker`` processes and wait until every one of them is ready."""
        assert self.app is not None
        for name in names:
            self.procs.worker(name, APP, self.app.QUEUE, self.args.concurrency, self.env)
        if self.args.beat:
            self.procs.spawn("beat", [sys.executable, "-m", "celery", "-A", APP, "beat", "-l", "warning",
                                      "-s", str(self.tmp / "beat-schedule")], self.env)
        deadline = time.monotonic() + 60
        ready_key = self.app.ledger_key("ready")
        while self.ledger().scard(ready_key) < len(names):
            dead = [n for n in names if self.procs.started[n].poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"worker {dead or names} did not start:\n{self.procs.log_tail((dead or names)[0])}")
            time.sleep(0.1)
        self.say(f"workers: {', '.join(names)} ready (prefork -c {self.args.concurrency}, acks_late, "
                 "reject_on_worker_lost)" + (", beat running" if self.args.beat else ""))

    def kill_child(self, worker: str, charged: int) -> None:
        """SIGKILL one pool process of ``worker`` (its parent forks a new one)."""
        pool = children(self.procs.started[worker].pid)
        if not pool:
            return
        pid = random.choice(pool)
        os.kill(pid, signal.SIGKILL)
        self.note(f"SIGKILL pool process {pid} of worker {worker} at {charged}/{self.args.orders} charged")

    def kill_worker(self, worker: str, replacement: str, charged: int) -> None:
        """SIGKILL a whole worker (parent and pool) and start a replacement."""
        assert self.app is not None
        self.procs.kill_group(worker)
        self.note(f"SIGKILL worker {worker} (parent and pool) at {charged}/{self.args.orders} charged; "
                  f"its unacked messages come back after the visibility timeout")
        env = dict(self.env)
        if self.args.failpoint:
            env.update(CELERY_RELIABLE_FAILPOINTS=self.args.failpoint,
                       CELERY_RELIABLE_FAILPOINTS_URL=self.env["DEMO_LEDGER"])
        self.procs.worker(replacement, APP, self.app.QUEUE, self.args.concurrency, env)
        self.say(f"started replacement worker {replacement}"
                 + (f" (crashes at failpoint {self.args.failpoint} once per task)" if self.args.failpoint else ""))

    def note(self, message: str, killed: int = 1) -> None:
        """Record and print a fault we injected."""
        self.kills.append(message)
        self.killed += killed
        self.say(message)

    def backlog(self) -> dict[str, int]:
        """What is still waiting: queued, unacked (delivered, not acked), and parked (deferred set)."""
        from celery_reliable.runtime import runtime

        assert self.app is not None
        broker = redis.Redis.from_url(self.env["DEMO_BROKER"])
        try:
            prefix = f"demo-{self.run_id}:"
            queued, unacked = broker.llen(prefix + self.app.QUEUE), broker.hlen(prefix + "unacked")
        finally:
            broker.close()
        sizes = runtime(self.app.app).deferred().sizes()
        return {"queued": queued, "unacked": unacked, "parked": sizes["due"], "pumping": sizes["inflight"]}

    def run(self) -> int:
        """Set up, publish, break things, wait, count; the exit status."""
        engine = self.setup()
        assert self.app is not None
        task = self.app.charge_unprotected if self.args.unprotected else self.app.charge
        self.start_workers(["a", "b"])
        rng = random.Random(self.args.seed)
        messages, expected = workload(self.run_id, self.args.orders, rng)
        for msg in messages:
            task.apply_async(kwargs={"order_id": msg.order_id, "amount_cents": msg.amount_cents}, task_id=msg.task_id)
        self.task_ids = {m.task_id for m in messages}
        kinds = {k: sum(m.kind == k for m in messages) for k in ("double-click", "re-sent")}
        self.say(f"published {len(messages)} {task.name} messages for {len(expected)} orders "
                 f"({kinds['double-click']} double-clicks, {kinds['re-sent']} re-sent with the same task id)")
        pending = self.wait(engine, {m.task_id: task.AsyncResult(m.task_id) for m in messages})
        return self.verdict(engine, messages, expected, pending)

    def wait(self, engine: Engine, results: dict[str, Any]) -> dict[str, Any]:
        """Inject the faults as work progresses; wait until all is done. Returns unfinished results."""
        plan = [(0.15, lambda n: self.kill_child("a", n)), (0.35, lambda n: self.kill_worker("b", "c", n)),
                (0.6, lambda n: self.kill_child("a", n))]
        assert self.app is not None
        rows = select(func.count()).where(self.app.payments.c.run_id == self.run_id)
        deadline = time.monotonic() + self.args.timeout
        quiet, next_status = 0, time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                charged = conn.execute(rows).scalar() or 0
            while plan and charged >= plan[0][0] * self.args.orders:
                plan.pop(0)[1](charged)
            if charged >= self.args.orders and not plan:
                results = {tid: r for tid, r in results.items() if not r.ready()}
                quiet = quiet + 1 if not results and not any(self.backlog().values()) else 0
                if quiet >= 3:
                    break
            if time.monotonic() > next_status:  # say what we wait for when it takes long
                next_status += 10
                self.say(f"waiting: {charged}/{self.args.orders} charged, backlog {self.backlog()}")
            time.sleep(0.2)
        self.say("all messages handled" if not results else f"timed out with {len(results)} task(s) unfinished")
        return {tid: r for tid, r in results.items() if not r.ready()}

    def verdict(self, engine: Engine, messages: list[Message], expected: dict[str, int],
                pending: dict[str, Any]) -> int:
        """Count, print the table, and return 0 if exactly once held."""
        assert self.app is not None
        led = self.ledger()

        def count(name: str) -> int:
            return int(led.get(self.app.ledger_key(name)) or 0)  # type: ignore[union-attr]

        if self.args.failpoint:
            self.fired = int(led.exists(*(f"failpoint:{self.args.failpoint}:{tid}" for tid in self.task_ids)))
            self.kills.append(f"worker c's pool processes SIGKILLed themselves {self.fired} times "
                              f"at failpoint {self.args.failpoint}")
            self.killed += self.fired
        results = [self.app.app.AsyncResult(tid) for tid in self.task_ids - pending.keys()]
        failed = [r for r in results if r.state != "SUCCESS"]
        answered_none = sum(1 for r in results if r.state == "SUCCESS" and r.result is None)
        effects, duplicated, lost, unknown, charged = count_effects(engine, self.app.payments, self.run_id, expected)
        out = Outcome(
            orders=len(expected), published=len(messages),
            double_clicks=sum(m.kind == "double-click" for m in messages),
            redeliveries=sum(m.kind == "re-sent" for m in messages),
            deliveries=count("deliveries"), bodies=count("bodies"), kills=self.kills, killed=self.killed,
            effects=effects, duplicated=duplicated, lost=lost, unknown=unknown,
            charged_cents=charged, expected_cents=sum(expected.values()),
            failed_results=len(failed), pending_results=len(pending),
            seconds=time.monotonic() - self.started,
        )
        for r in failed[:3]:
            out.notes.append(f"task {r.id}: {r.state} {r.result!r}")
        if answered_none:
            out.notes.append(f"{answered_none} task(s) returned None, not the charge's result: the process that "
                             "committed the payment died before storing its return value (the payment is there, once)")
        print(render(out), flush=True)
        return 0 if out.ok else 1

    def cleanup(self) -> None:
        """Delete this run's keys when we used a shared Redis (a private one just stops)."""
        if self._ledger is not None:
            self._ledger.close()
        if self.private or not self.env:
            return
        client = redis.Redis.from_url(self.env["DEMO_LEDGER"])
        try:
            pipe = client.pipeline(transaction=False)
            for key in client.scan_iter(match=f"demo-{self.run_id}:*", count=1000):
                pipe.delete(key)
            for tid in self.task_ids:  # the failpoints' own keys carry no prefix
                pipe.delete(*(f"failpoint:{point}:{tid}" for point in FAILPOINTS))
            if self.fired:
                pipe.decrby(f"failpoint:{self.args.failpoint}:fired", self.fired)
            pipe.execute()
            if self.fired and client.get(f"failpoint:{self.args.failpoint}:fired") == b"0":
                client.delete(f"failpoint:{self.args.failpoint}:fired")
        except redis.RedisError as exc:
            print(f"could not remove the demo's keys: {exc!r}", file=sys.stderr)
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = parse_args(argv)
    if args.failpoint == "none":
        args.failpoint = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    tmp = Path(tempfile.mkdtemp(prefix="celery-reliable-demo-"))
    procs = Processes(tmp)
    demo = Demo(args, procs, tmp)
    status = 2
    try:
        status = demo.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except Exception as exc:
        print(f"demo failed to run: {exc}", file=sys.stderr)
    finally:
        procs.stop_all()
        demo.cleanup()
        if args.keep or status != 0:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status
