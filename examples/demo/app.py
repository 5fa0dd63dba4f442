"""The Celery app the demo's ``celery worker``, ``beat`` and ``flower`` processes run, and its tasks.

Everything comes from ``DEMO_*`` environment variables that :mod:`examples.demo.run` sets
before it starts the processes (and before it imports this module to publish):

* ``DEMO_BROKER`` / ``DEMO_BACKEND``: Celery's broker and result backend (Redis).
* ``DEMO_RELIABLE_REDIS``: ``reliable_redis_url`` (claims, locks, meters, breakers, deferred set).
* ``DEMO_DB``: ``reliable_database_url``; the demo's own tables live there too.
* ``DEMO_LEDGER``: a Redis where the tasks count what happened; it never deduplicates.
* ``DEMO_RUN``: this run's id; it scopes every Redis key, queue and row.
* ``DEMO_METRICS_PORT``: the worker's Prometheus endpoint (each worker gets its own).

Workers run per bulkhead tier: one consumes the ``critical`` queue, one the ``standard``
and ``optional`` queues. Each task is routed to the queue of its tier.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery, Task, signals
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine

import celery_reliable
from celery_reliable import ReliableTask, RetryPolicy, fenced_upsert
from celery_reliable.retries import on

env = os.environ.get
RUN = env("DEMO_RUN", "local")
PREFIX = f"demo-{RUN}"
#: The queue of each bulkhead tier.
QUEUES = {tier: f"{PREFIX}.{tier}" for tier in ("critical", "standard", "optional")}
#: The tier sizes: the most bodies of a tier running at once, over all workers.
BULKHEADS = {"critical": 20, "standard": 6, "optional": 1}
#: The shared limit of the partner API, over both workers and both task types that call it.
PARTNER_LIMIT = 10
#: Seconds the charge holds its transaction open, to widen the window a SIGKILL can hit.
HOLD = float(env("DEMO_HOLD", "0.02"))
#: The fake dependency's breaker: open after 3 failures in a row, probe again after 2 s.
BREAKER = "fx-api"
BREAKER_OPTIONS = {"failure_threshold": 3, "recovery_timeout": 2.0}
#: Attempts of ``import_statement`` before its letter is written.
STATEMENT_ATTEMPTS = 3
#: celery-reliable's maintenance jobs that beat sends (counted in the ledger like the demo's tasks).
MAINTENANCE = frozenset(
    {
        "relay_outbox",
        "pump_deferred",
        "cleanup_idempotency",
        "cleanup_inbox",
        "cleanup_http_idempotency",
        "cleanup_outbox",
        "purge_dead_letters",
    }
)
#: The lock lease of ``rebuild_report``.
REPORT_LOCK_TTL = 5.0

#: The demo's own tables. ``demo_payments`` deliberately has NO unique constraint on
#: ``order_id``: nothing in the database stops a double charge, only celery-reliable does.
metadata = MetaData()
payments = Table(
    "demo_payments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("order_id", String(64), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now()),
)
#: The report a singleton job rebuilds; writes are fenced with the lock's token.
reports = Table(
    "demo_reports",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("day", String(16), primary_key=True),
    Column("builds", Integer, nullable=False),
    Column("built_by", String(64), nullable=False),
    Column("fence_token", BigInteger, nullable=True),
)
#: Orders written in the business transaction of the outbox phase.
orders = Table(
    "demo_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("order_id", String(64), nullable=False),
)
#: Receipts sent by the outbox's consumer; no unique constraint either.
receipts = Table(
    "demo_receipts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("order_id", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
)

app = Celery(
    "demo",
    broker=env("DEMO_BROKER", "redis://127.0.0.1:6379/8"),
    backend=env("DEMO_BACKEND", "redis://127.0.0.1:6379/8"),
)
app.conf.update(
    reliable_redis_url=env("DEMO_RELIABLE_REDIS", "redis://127.0.0.1:6379/8"),
    reliable_database_url=env("DEMO_DB", "sqlite:///demo.sqlite"),
    reliable_key_prefix=PREFIX,
    reliable_bulkheads=BULKHEADS,
    reliable_circuit_breakers={BREAKER: BREAKER_OPTIONS},
    reliable_claim_lease=3.0,  # a SIGKILLed worker's claim frees itself within 3 s
    reliable_busy_delay=0.3,
    reliable_defer_jitter=0.2,
    reliable_pump_interval=0.1,
    # Entries a SIGKILLed worker's pump had taken but not yet published go back to the
    # deferred set when this lease runs out (default 15 s; short for the demo).
    reliable_pump_lease=5.0,
    reliable_bulkhead_lease=5.0,
    reliable_beat_lease=5.0,
    reliable_cleanup_interval=10.0,  # so beat runs the cleanup jobs during the demo
    reliable_send_events=True,
    worker_send_task_events=True,  # -E: Flower sees every task and every reliability decision
    task_send_sent_event=True,
    task_acks_late=True,  # ack after the task ran: a killed worker's task is redelivered
    task_reject_on_worker_lost=True,  # a killed child's task goes straight back to the queue
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUES["standard"],  # beat's maintenance jobs run on the standard worker
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    # A whole worker SIGKILLed leaves its unacked messages in Redis; the survivors put
    # them back once they are older than the visibility timeout (short for the demo).
    broker_transport_options={
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "global_keyprefix": f"{PREFIX}:",
    },
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
)
if env("DEMO_METRICS_PORT"):
    app.conf.reliable_metrics_port = int(env("DEMO_METRICS_PORT", "0"))
celery_reliable.install(app, beat=True)  # also makes LeaderScheduler beat's scheduler

_ledger: redis.Redis | None = None
_engines: dict[int, Engine] = {}  # per process: a forked child never reuses its parent's


def ledger() -> redis.Redis:
    """This process's client for the ledger Redis (made again after a fork)."""
    global _ledger
    if _ledger is None or _ledger.connection_pool.pid != os.getpid():
        _ledger = redis.Redis.from_url(env("DEMO_LEDGER", "redis://127.0.0.1:6379/8"))
    return _ledger


def ledger_key(name: str) -> str:
    """The ledger key ``name`` of this run."""
    return f"{PREFIX}:ledger:{name}"


def engine() -> Engine:
    """This process's engine for the demo's own tables (SQLite waits for its write lock)."""
    eng = _engines.get(os.getpid())
    if eng is None:
        url = app.conf.reliable_database_url
        eng = _engines[os.getpid()] = create_engine(url, connect_args={"timeout": 30} if "sqlite" in url else {})
    return eng


def server_time_us() -> int:
    """The Redis server's clock in microseconds (the clock the guards decide on)."""
    seconds, micros = ledger().time()
    return int(seconds) * 1_000_000 + int(micros)


@contextlib.contextmanager
def span(name: str, detail: str = "") -> Iterator[None]:
    """Record when a body ran, on the Redis clock: ``start end pid detail`` in list ``spans:<name>``."""
    start = server_time_us()
    try:
        yield
    finally:
        ledger().rpush(ledger_key(f"spans:{name}"), f"{start} {server_time_us()} {os.getpid()} {detail}")


def short(task_name: str) -> str:
    """A demo task's name without the module."""
    return task_name.rsplit(".", 1)[-1]


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    ledger().sadd(ledger_key("ready"), getattr(sender, "hostname", "?"))


@signals.task_prerun.connect
def _count_delivery(task: Any = None, **_: Any) -> None:
    """Count every delivery that reaches a demo task or a maintenance job (before any guard decides)."""
    name = getattr(task, "name", "")
    if name.startswith((f"{__name__}.", "celery_reliable.")):
        ledger().hincrby(ledger_key("deliveries"), short(name), 1)


def _body(task: Task) -> None:
    """Count a body that started, and whether it was a retry."""
    pipe = ledger().pipeline(transaction=False)
    pipe.hincrby(ledger_key("bodies"), short(task.name), 1)
    if task.request.retries:
        pipe.hincrby(ledger_key("retried"), short(task.name), 1)
    pipe.execute()


# -- phase 1: payments, exactly-once effects -------------------------------------------------


@app.task(base=ReliableTask, bind=True, idempotency_key="charge:{order_id}", bulkhead="critical")
def charge(self: ReliableTask, order_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge an order once, however many times it is delivered.

    The payment row and the idempotency record commit together in
    ``self.transaction()``: a duplicate that gets this far finds the record, rolls its
    own insert back and returns the first execution's result instead.
    """
    _body(self)
    with self.transaction() as session:
        session.execute(
            insert(payments).values(
                run_id=RUN,
                order_id=order_id,
                amount_cents=amount_cents,
                task_id=self.request.id,
                pid=os.getpid(),
            )
        )
        time.sleep(HOLD)  # more work in the same transaction; a SIGKILL here loses nothing
    return {"order_id": order_id, "charged": amount_cents}


@app.task(bind=True)
def charge_unprotected(self: Task, order_id: str, amount_cents: int) -> dict[str, Any]:
    """The same charge as a plain Celery task, for ``--unprotected``: duplicates charge again."""
    _body(self)
    with engine().begin() as conn:
        conn.execute(
            insert(payments).values(
                run_id=RUN,
                order_id=order_id,
                amount_cents=amount_cents,
                task_id=self.request.id,
                pid=os.getpid(),
            )
        )
        time.sleep(HOLD)
    return {"order_id": order_id, "charged": amount_cents}


# -- phase 2: a singleton job with a fenced write, and the optional tier's bulkhead ----------


@app.task(
    base=ReliableTask,
    bind=True,
    lock_key="report:{day}",
    lock_ttl=REPORT_LOCK_TTL,
    on_locked="defer",
    bulkhead="standard",
)
def rebuild_report(self: ReliableTask, day: str) -> dict[str, Any]:
    """Rebuild the report of ``day``: one body at a time cluster-wide, its write fenced with its token."""
    _body(self)
    token = int(self.request.fencing_token)
    with span("rebuild_report", str(token)):
        time.sleep(0.25)  # the work
        self.check_lock()  # LockLost if the lease ran out meanwhile
        with engine().begin() as conn:
            row = {"run_id": RUN, "day": day}
            fenced_upsert(
                conn,
                reports,
                row,
                {"builds": _builds(conn, day) + 1, "built_by": self.request.id},
                token,
                resource=f"report {day}",
            )
    return {"day": day, "fencing_token": token}


def _builds(conn: Any, day: str) -> int:
    """How many builds the report of ``day`` has had."""
    found = conn.execute(select(reports.c.builds).where(reports.c.run_id == RUN, reports.c.day == day)).scalar()
    return int(found or 0)


@app.task(base=ReliableTask, bind=True, bulkhead="optional")
def warm_cache(self: ReliableTask, n: int) -> int:
    """Optional work: at most ``BULKHEADS['optional']`` bodies at once, whatever the pool size."""
    _body(self)
    with span("warm_cache", str(n)):
        time.sleep(0.3)
    return n


# -- phase 3: a dependency outage behind a shared circuit breaker -----------------------------


def fx_api(n: int) -> float:
    """The fake dependency: up or down as the demo switches ledger key ``fx:up``; counts its calls."""
    led = ledger()
    up = led.get(ledger_key("fx:up")) == b"1"
    led.hincrby(ledger_key("fx"), "ok" if up else "failed", 1)
    time.sleep(0.02)
    if not up:
        raise ConnectionError("fx-api unreachable")
    return 1.0 + n / 1000


@app.task(
    base=ReliableTask,
    bind=True,
    circuit_breaker=BREAKER,
    bulkhead="standard",
    retry_policy=RetryPolicy(max_attempts=10, base=0.2, cap=1.0),
)
def fetch_rate(self: ReliableTask, n: int) -> float:
    """Ask the FX API; while its breaker is open the task is parked, not failed."""
    _body(self)
    return fx_api(n)


# -- phase 4: one global rate limit shared by two task types on two workers --------------------


def _admitted_at(task: ReliableTask) -> int:
    """The meter's admission instant of this run (server µs), as the rate guard set it on the request."""
    slot = getattr(task.request, "rate_limit_slot", None) or {}
    return int(slot.get("at_us") or 0)


@app.task(
    base=ReliableTask,
    bind=True,
    global_rate_limit=f"{PARTNER_LIMIT}/s",
    rate_limit_key="partner-api",
    bulkhead="critical",
)
def push_to_partner(self: ReliableTask, n: int) -> int:
    """Critical work calling the partner API (the critical worker runs it)."""
    _body(self)
    with span("partner", f"push {_admitted_at(self)}"):
        time.sleep(0.01)
    return n


@app.task(
    base=ReliableTask,
    bind=True,
    global_rate_limit=f"{PARTNER_LIMIT}/s",
    rate_limit_key="partner-api",
    bulkhead="standard",
)
def refresh_from_partner(self: ReliableTask, n: int) -> int:
    """Standard work calling the same partner API (the standard worker runs it), on the same meter."""
    _body(self)
    with span("partner", f"refresh {_admitted_at(self)}"):
        time.sleep(0.01)
    return n


# -- phase 5: tasks that keep failing land in the dead-letter store ----------------------------


@app.task(
    base=ReliableTask,
    bind=True,
    bulkhead="standard",
    retry_policy=RetryPolicy(max_attempts=STATEMENT_ATTEMPTS, base=0.1, cap=0.3, dont_retry_on=on(ValueError)),
)
def import_statement(self: ReliableTask, n: int, kind: str) -> str:
    """Import a bank statement. ``flaky``: the bank times out (until the demo fixes it); ``corrupt``: a bad file."""
    _body(self)
    ledger().hincrby(ledger_key("attempts:import_statement"), self.request.id, 1)
    if kind == "corrupt":
        raise ValueError(f"statement {n}: not a CAMT.053 file")
    if ledger().get(ledger_key("bank:up")) != b"1":
        raise TimeoutError(f"statement {n}: bank timed out")
    return f"statement {n} imported"


# -- phase 6: the transactional outbox's consumer ---------------------------------------------


@app.task(base=ReliableTask, bind=True, inbox=True, bulkhead="standard")
def send_receipt(self: ReliableTask, order_id: str) -> str:
    """Send an order's receipt once per outbox message (the inbox row commits with the receipt)."""
    _body(self)
    with self.transaction() as session:
        session.execute(insert(receipts).values(run_id=RUN, order_id=order_id, task_id=self.request.id))
    return order_id


#: Every demo task goes to the queue of its bulkhead tier.
app.conf.task_routes = {
    task.name: {"queue": QUEUES[tier]}
    for task, tier in (
        (charge, "critical"),
        (charge_unprotected, "critical"),
        (push_to_partner, "critical"),
        (rebuild_report, "standard"),
        (fetch_rate, "standard"),
        (refresh_from_partner, "standard"),
        (import_statement, "standard"),
        (send_receipt, "standard"),
        (warm_cache, "optional"),
    )
}
