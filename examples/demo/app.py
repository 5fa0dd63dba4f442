"""The Celery app the demo's ``celery worker`` processes run, and the ``charge`` task.

Everything comes from ``DEMO_*`` environment variables that :mod:`examples.demo.run`
sets before it starts the workers (and before it imports this module to publish):

* ``DEMO_BROKER`` / ``DEMO_BACKEND``: Celery's broker and result backend (Redis).
* ``DEMO_RELIABLE_REDIS``: ``reliable_redis_url`` (claims, cached results, deferred set).
* ``DEMO_DB``: ``reliable_database_url``; the payments table lives there too.
* ``DEMO_LEDGER``: a Redis where workers count deliveries; it never deduplicates.
* ``DEMO_RUN``: this run's id; it scopes every Redis key, queue and payment row.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, Task, signals
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, func, insert
from sqlalchemy.engine import Engine

import celery_reliable
from celery_reliable import ReliableTask

env = os.environ.get
RUN = env("DEMO_RUN", "local")
QUEUE = f"demo-{RUN}"
#: Seconds the task holds its transaction open, to widen the window a SIGKILL can hit.
HOLD = float(env("DEMO_HOLD", "0.02"))

#: The demo's own table. Deliberately WITHOUT a unique constraint on ``order_id``:
#: nothing in the database stops a double charge, only celery-reliable does.
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

app = Celery("demo", broker=env("DEMO_BROKER", "redis://127.0.0.1:6379/8"),
             backend=env("DEMO_BACKEND", "redis://127.0.0.1:6379/8"))
app.conf.update(
    reliable_redis_url=env("DEMO_RELIABLE_REDIS", "redis://127.0.0.1:6379/8"),
    reliable_database_url=env("DEMO_DB", "sqlite:///demo.sqlite"),
    reliable_key_prefix=f"demo-{RUN}",
    reliable_claim_lease=3.0,  # a SIGKILLed worker's claim frees itself within 3 s
    reliable_busy_delay=0.3,
    reliable_defer_jitter=0.2,
    reliable_pump_interval=0.1,
    # Entries a SIGKILLed worker's pump had taken but not yet published go back to the
    # deferred set when this lease runs out (default 60 s; short for the demo).
    reliable_pump_lease=5.0,
    task_acks_late=True,  # ack after the task ran: a killed worker's task is redelivered
    task_reject_on_worker_lost=True,  # a killed child's task goes straight back to the queue
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    # A whole worker SIGKILLed leaves its unacked messages in Redis; the survivors put
    # them back once they are older than the visibility timeout (short for the demo).
    broker_transport_options={
        "visibility_timeout": 5, "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
        "global_keyprefix": f"demo-{RUN}:",
    },
    result_backend_transport_options={"global_keyprefix": f"demo-{RUN}:"},
)
celery_reliable.install(app, beat=True)

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
    return f"demo-{RUN}:ledger:{name}"


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    ledger().sadd(ledger_key("ready"), getattr(sender, "hostname", "?"))


@signals.task_prerun.connect
def _count_delivery(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", "") in (charge.name, charge_unprotected.name):
        ledger().incr(ledger_key("deliveries"))


@app.task(base=ReliableTask, bind=True, idempotency_key="charge:{order_id}")
def charge(self: ReliableTask, order_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge an order once, however many times it is delivered.

    The payment row and the idempotency record commit together in
    ``self.transaction()``: a duplicate that gets this far finds the record, rolls its
    own insert back and returns the first execution's result instead.
    """
    ledger().incr(ledger_key("bodies"))
    with self.transaction() as session:
        session.execute(insert(payments).values(
            run_id=RUN, order_id=order_id, amount_cents=amount_cents,
            task_id=self.request.id, pid=os.getpid(),
        ))
        time.sleep(HOLD)  # more work in the same transaction; a SIGKILL here loses nothing
    return {"order_id": order_id, "charged": amount_cents}


@app.task(bind=True)
def charge_unprotected(self: Task, order_id: str, amount_cents: int) -> dict[str, Any]:
    """The same charge as a plain Celery task, for ``--unprotected``: duplicates charge again."""
    ledger().incr(ledger_key("bodies"))
    engine = _engines.get(os.getpid())
    if engine is None:
        url = app.conf.reliable_database_url
        engine = _engines[os.getpid()] = create_engine(url, connect_args={"timeout": 30} if "sqlite" in url else {})
    with engine.begin() as conn:
        conn.execute(insert(payments).values(
            run_id=RUN, order_id=order_id, amount_cents=amount_cents,
            task_id=self.request.id, pid=os.getpid(),
        ))
        time.sleep(HOLD)
    return {"order_id": order_id, "charged": amount_cents}
