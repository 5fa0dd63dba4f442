"""The event-sourcing test app: an account aggregate, a balances projection and its consumer.

The event-store tests use their own database ``eventstore_test`` (created, migrated and
emptied once per test session by :func:`eventstore_engine`), Redis db 0 for the broker
(one queue per test), and Redis keys under ``es-tests:`` for the delivery ledger. Start
workers with ``app="tests.eventstore_app"`` and ``TEST_QUEUE`` set to the test's queue.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, signals
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import celery_reliable
from celery_reliable import migrate
from celery_reliable.eventstore import Aggregate, Projection, RecordedEvent, Upcasters, applies

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
DATABASE_URL = "postgresql+psycopg://root@127.0.0.1/eventstore_test"
BROKER_URL = "redis://127.0.0.1:6379/0"
#: Every Redis key the event-store tests write starts with this.
PREFIX = "es-tests"

app = Celery("eventstore_tests", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    reliable_redis_url=BROKER_URL,
    reliable_key_prefix=f"{PREFIX}:reliable",
    reliable_database_url=DATABASE_URL,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("TEST_QUEUE", "es-tests-default"),
    broker_connection_retry_on_startup=True,
)
celery_reliable.install(app)

# -- the domain ---------------------------------------------------------------------------

#: Deposited v1 held euros as a float; v2 holds cents; v3 adds the currency.
upcasters = Upcasters()


@upcasters.register("Deposited", 1)
def _deposited_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"cents": round(data["euros"] * 100)}


@upcasters.register("Deposited", 2)
def _deposited_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


class Account(Aggregate):
    """A bank account: deposits and withdrawals in cents."""

    snapshot_every = 5
    event_schema_versions = {"Deposited": 3}

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.balance = 0
        self.deposits = 0
        self.history: list[int] = []

    def deposit(self, cents: int) -> None:
        """Record a deposit (must be positive)."""
        if cents <= 0:
            raise ValueError("a deposit must be positive")
        self.record("Deposited", {"cents": cents, "currency": "EUR"})

    def withdraw(self, cents: int) -> None:
        """Record a withdrawal (refused above the balance)."""
        if cents > self.balance:
            raise ValueError("insufficient funds")
        self.record("Withdrawn", {"cents": cents})

    @applies("Deposited")
    def _deposited(self, data: dict[str, Any]) -> None:
        self.balance += data["cents"]
        self.deposits += 1
        self.history.append(data["cents"])

    def apply_Withdrawn(self, data: dict[str, Any]) -> None:
        self.balance -= data["cents"]
        self.history.append(-data["cents"])


# -- the read model -----------------------------------------------------------------------

balances = Projection("es-test-balances", upcasters=upcasters)


@balances.on("Deposited", "Withdrawn")
def _balance(session: Session, event: RecordedEvent) -> None:
    sign = 1 if event.type == "Deposited" else -1
    session.execute(
        text(
            "INSERT INTO es_balances (account, balance, events) VALUES (:a, :b, 1) "
            "ON CONFLICT (account) DO UPDATE SET balance = es_balances.balance + :b, events = es_balances.events + 1"
        ),
        {"a": event.stream_id, "b": sign * event.data["cents"]},
    )
    # The effects ledger has no unique constraint: an event applied twice shows up twice.
    session.execute(
        text("INSERT INTO es_effects (projection, event_id, pid) VALUES (:p, :e, :pid)"),
        {"p": balances.name, "e": event.event_id, "pid": os.getpid()},
    )


@balances.on_reset
def _reset_balances(session: Session) -> None:
    session.execute(text("DELETE FROM es_balances"))


consume_balances = balances.task(app)


@signals.task_prerun.connect
def _count_delivery(task_id: str | None = None, task: Any = None, kwargs: Any = None, **_: Any) -> None:
    """Ledger of deliveries (duplicates kept): one list entry per task run."""
    if task is not consume_balances:
        return
    event = (kwargs or {}).get("event") or {}
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.rpush(f"{PREFIX}:deliveries", f"{event.get('event_id')}|{task_id}|{os.getpid()}")
    finally:
        client.close()


# -- the database -------------------------------------------------------------------------


def eventstore_engine() -> Engine:
    """The ``eventstore_test`` database: created if missing, migrated, read-model tables made, emptied."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'eventstore_test'")).first() is None:
            conn.execute(text("CREATE DATABASE eventstore_test"))
    admin.dispose()
    eng = create_engine(DATABASE_URL, pool_size=12)
    migrate.upgrade(eng)
    with eng.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS es_balances (account text PRIMARY KEY, balance bigint NOT NULL, "
                "events int NOT NULL)"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS es_effects (id bigserial PRIMARY KEY, projection text NOT NULL, "
                "event_id text NOT NULL, pid int)"
            )
        )
        conn.execute(
            text(
                "TRUNCATE es_balances, es_effects, reliable_events, reliable_event_streams, "
                "reliable_event_snapshots, reliable_projections, reliable_outbox, reliable_inbox"
            )
        )
    return eng


def deliveries() -> list[str]:
    """The consumer's delivery ledger: ``event_id|task_id|pid`` per run, duplicates kept."""
    client = redis.Redis.from_url(BROKER_URL)
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in client.lrange(f"{PREFIX}:deliveries", 0, -1)]
    finally:
        client.close()


def forget_deliveries() -> None:
    """Empty the delivery ledger."""
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.delete(f"{PREFIX}:deliveries")
    finally:
        client.close()
