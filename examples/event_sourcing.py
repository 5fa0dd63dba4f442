"""Event sourcing: an account aggregate, optimistic concurrency, upcasting, snapshots, events
published through the outbox, and a read model fed once per event and rebuilt from scratch.

Run it from the repository root (needs Redis on 127.0.0.1:6379; uses its db 3 as the broker
and SQLite in a temporary directory, or ``EXAMPLE_DATABASE_URL`` for PostgreSQL)::

    python -m examples.event_sourcing

In production a worker consumes the projection's queue and beat runs the outbox relay;
here the example relays, then plays the worker by taking the messages off the queue and
running the consumer task in-process (one message twice, as a broker redelivery would).
``celery -A proj reliable projection rebuild balances`` does what the last step does.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import celery_reliable
from celery_reliable import migrate
from celery_reliable.eventstore import (
    Aggregate,
    ConcurrencyConflict,
    NewEvent,
    Projection,
    RecordedEvent,
    Upcasters,
    append,
    applies,
    load,
    read_snapshot,
    rebuild,
    run_command,
    save,
)
from celery_reliable.outbox import relay_outbox

BROKER = os.environ.get("EXAMPLE_BROKER_URL", "redis://127.0.0.1:6379/3")
DATABASE = os.environ.get(
    "EXAMPLE_DATABASE_URL", f"sqlite:///{tempfile.mkdtemp(prefix='event-sourcing-example-')}/bank.db"
)
QUEUE = "bank-projections"

app = Celery("bank", broker=BROKER)
app.conf.update(reliable_redis_url=BROKER, reliable_database_url=DATABASE, task_default_queue=QUEUE)
celery_reliable.install(app)

# Version 1 of "Deposited" held euros as a float; version 2 holds integer cents.
upcasters = Upcasters()


@upcasters.register("Deposited", 1)
def deposited_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Euros (float) to cents (int)."""
    return {"cents": round(data["euros"] * 100)}


class Account(Aggregate):
    """A bank account. Commands check and record; apply methods only change state."""

    snapshot_every = 10
    event_schema_versions = {"Deposited": 2}

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.balance = 0

    def deposit(self, cents: int) -> None:
        """Record a deposit."""
        if cents <= 0:
            raise ValueError("a deposit must be positive")
        self.record("Deposited", {"cents": cents})

    def withdraw(self, cents: int) -> None:
        """Record a withdrawal, refused above the balance."""
        if cents > self.balance:
            raise ValueError(f"insufficient funds: {self.balance} < {cents}")
        self.record("Withdrawn", {"cents": cents})

    @applies("Deposited")
    def _deposited(self, data: dict[str, Any]) -> None:
        self.balance += data["cents"]

    @applies("Withdrawn")
    def _withdrawn(self, data: dict[str, Any]) -> None:
        self.balance -= data["cents"]


balances = Projection("balances", upcasters=upcasters)


@balances.on("Deposited", "Withdrawn")
def update_balance(session: Session, event: RecordedEvent) -> None:
    """Keep ``balances`` (the read model) in step with the accounts."""
    delta = event.data["cents"] if event.type == "Deposited" else -event.data["cents"]
    session.execute(
        text(
            "INSERT INTO balances (account, cents) VALUES (:a, :d) "
            "ON CONFLICT (account) DO UPDATE SET cents = balances.cents + :d"
        ),
        {"d": delta, "a": event.stream_id},
    )


@balances.on_reset
def reset_balances(session: Session) -> None:
    """Empty the read model before a rebuild."""
    session.execute(text("DELETE FROM balances"))


consume = balances.task(app)


def transfer_in(engine: Engine, account_id: str, cents: int) -> int:
    """A command: load, decide, save (and publish); run again on a concurrency conflict."""

    def command(session: Session) -> int:
        account = load(session, Account, account_id, upcasters=upcasters)
        account.deposit(cents)
        save(session, account, publish=consume, app=app)
        return account.version

    return run_command(engine, command)


def show(engine: Engine, title: str) -> dict[str, int]:
    """Print and return the read model."""
    with engine.connect() as conn:
        rows: dict[str, int] = dict(conn.execute(text("SELECT account, cents FROM balances ORDER BY account")).all())
    print(f"{title}: {rows}")
    return rows


def main() -> None:
    """Walk through the features."""
    engine = create_engine(DATABASE)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL)"))

    # An event written years ago in the old shape, then new commands on top of it.
    with Session(engine) as session, session.begin():
        old = NewEvent("Deposited", {"euros": 12.5}, schema_version=1)
        append(session, "acct-alice", [old], expected_version=0, publish=consume, app=app)
    for cents in (100, 250, 75):
        print("alice at version", transfer_in(engine, "acct-alice", cents))
    transfer_in(engine, "acct-bob", 500)

    # Two writers decide on the same version: the second is refused, nothing written.
    with Session(engine) as first, Session(engine) as second:
        a = load(first, Account, "acct-bob", upcasters=upcasters)
        b = load(second, Account, "acct-bob", upcasters=upcasters)
        a.withdraw(300)
        b.withdraw(300)
        save(first, a, publish=consume, app=app)
        first.commit()
        try:
            save(second, b, publish=consume, app=app)
        except ConcurrencyConflict as exc:
            second.rollback()
            print("refused:", exc)

    # Many events: snapshots every 10, and loading from one equals replaying everything.
    for _ in range(12):
        transfer_in(engine, "acct-carol", 10)
    with Session(engine) as session:
        snap = read_snapshot(session, "acct-carol")
        fast = load(session, Account, "acct-carol")
        full = load(session, Account, "acct-carol", use_snapshot=False)
        print(f"carol: snapshot at version {snap.version if snap else None}; balance {fast.balance} == {full.balance}")

    # Relay the outbox, then consume as a worker would; the first message arrives twice.
    print("relay:", relay_outbox(app, engine=engine))
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(QUEUE)
        try:
            first_message: dict[str, Any] | None = None
            while True:
                msg = queue.get(timeout=0.5)
                event = msg.payload[1]["event"]
                first_message = first_message or event
                consume.apply(kwargs={"event": event}, task_id=msg.headers["id"])
                msg.ack()
        except queue.Empty:
            pass
        finally:
            queue.close()
    if first_message is not None:
        again = consume.apply(kwargs={"event": first_message}, task_id=first_message["event_id"]).get()
        print("redelivered", first_message["event_id"], "applied again:", again)
    live = show(engine, "read model, built live")

    result = rebuild(engine, balances)
    print(f"rebuild: {result.read} events read, {result.applied} applied, position {result.position}")
    assert show(engine, "read model, rebuilt from position 0") == live


if __name__ == "__main__":
    main()
