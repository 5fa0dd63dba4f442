"""The consumer inbox: a message delivered twice changes the balance once.

Needs a Redis on localhost (or ``INBOX_REDIS_URL``). From the repository root::

    python -m examples.inbox

An embedded worker consumes payment events. ``apply_payment`` has ``inbox="{event_id}"``:
the event id is recorded first in ``self.transaction()``, in the same commit as the
balance update, so the same event published three times (an upstream that retried its
publish) moves the balance once and the duplicates end with ``None``.
``apply_refund`` has ``inbox=True``: the message id is the task id, which is what the
outbox publishes, so a redelivery of one message (sent again here with the same task
id) is a no-op too. Last, ``inbox.record`` does the same for a consumer outside Celery.

Environment: ``INBOX_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``: broker, results
and the reliable store, under keys of this run only, deleted at the end) and
``INBOX_DATABASE_URL`` (default SQLite in a temporary directory; or
``postgresql+psycopg://user@host/db``).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any

import redis
from celery import Celery, signals
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import celery_reliable
from celery_reliable import ReliableTask, inbox
from celery_reliable.migrate import upgrade

env = os.environ.get
RUN = uuid.uuid4().hex[:8]
REDIS_URL = env("INBOX_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = env("INBOX_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp(prefix='inbox-example-')}/billing.db"
QUEUE = f"example-inbox-{RUN}"
TABLE = f"example_balances_{RUN}"

app = Celery("billing", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_database_url=DATABASE_URL,
    reliable_key_prefix=f"example-inbox-{RUN}",  # this run's keys only
    task_default_queue=QUEUE,
    result_expires=600,
)
celery_reliable.install(app)


def _add(session: Session, account: str, amount: int) -> None:
    session.execute(
        text(f"UPDATE {TABLE} SET balance = balance + :a WHERE account = :acc"), {"a": amount, "acc": account}
    )


@app.task(base=ReliableTask, bind=True, name="billing.apply_payment", inbox="{event_id}")
def apply_payment(self: ReliableTask, event_id: str, account: str, amount: int) -> str:
    """Credit ``account`` once per ``event_id``, however often the event arrives."""
    with self.transaction() as session:  # the inbox row first, then the effect: one commit
        _add(session, account, amount)
    return f"credited {amount} for {event_id}"


@app.task(base=ReliableTask, bind=True, name="billing.apply_refund", inbox=True)
def apply_refund(self: ReliableTask, account: str, amount: int) -> str:
    """Debit ``account`` once per message (the task id, as the outbox publishes it)."""
    with self.transaction() as session:
        _add(session, account, -amount)
    return f"refunded {amount}"


#: (task id, return value) of every finished delivery of apply_refund: a redelivery reuses
#: the task id, so its AsyncResult would only show the first delivery's result.
refund_deliveries: list[tuple[str, Any]] = []


@signals.task_postrun.connect(sender=apply_refund, weak=False)
def _refund_finished(task_id: str | None = None, retval: Any = None, **_: Any) -> None:
    refund_deliveries.append((str(task_id), retval))


def balance(engine: Engine, account: str) -> int:
    """The account's balance."""
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT balance FROM {TABLE} WHERE account = :a"), {"a": account}).scalar_one())


def main() -> int:
    """Deliver each message more than once; 0 if every one changed the balance once."""
    from celery.contrib.testing.worker import start_worker

    engine = create_engine(DATABASE_URL)
    upgrade(engine)  # reliable_inbox and the other tables; `celery -A proj reliable migrate` does the same
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {TABLE} (account VARCHAR(64) PRIMARY KEY, balance INTEGER NOT NULL)"))
        conn.execute(text(f"INSERT INTO {TABLE} VALUES ('alice', 0)"))
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"):
            event_id = f"evt-{RUN}"
            answers = [apply_payment.delay(event_id, "alice", 100).get(timeout=30) for _ in range(3)]
            print(f"payment event {event_id} delivered 3 times: {answers}")
            print(f"  alice's balance: {balance(engine, 'alice')} (want 100)")

            message_id = str(uuid.uuid4())
            for _ in range(2):
                apply_refund.apply_async(("alice", 30), task_id=message_id)
            deadline = time.monotonic() + 30
            while len(refund_deliveries) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            again = [retval for task_id, retval in refund_deliveries if task_id == message_id]
            print(f"refund message {message_id} delivered twice: {again}")
            print(f"  alice's balance: {balance(engine, 'alice')} (want 70)")

        outside = []
        for _ in range(2):  # a consumer that is not a Celery task: a webhook handler, a Kafka loop
            with Session(engine) as session, session.begin():
                if not inbox.record(session, "billing-webhook", f"hook-{RUN}"):
                    outside.append("skipped: processed before")
                    continue  # leaving the block commits nothing new
                _add(session, "alice", 5)
                outside.append("applied")
        print(f"webhook hook-{RUN} handled twice outside Celery: {outside}")
        final = balance(engine, "alice")
        print(f"  alice's balance: {final} (want 75)")
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {TABLE}"))
        engine.dispose()
        _forget_run()
    ok = (
        answers[1:] == [None, None]
        and again == ["refunded 30", None]
        and outside == ["applied", "skipped: processed before"]
    )
    return 0 if ok and final == 75 else 1


def _forget_run() -> None:
    """Delete this run's Redis keys (never anything else)."""
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"example-inbox-{RUN}*", f"_kombu.binding.{QUEUE}*"):
        for key in client.scan_iter(match=pattern, count=500):
            client.delete(key)
    client.close()


if __name__ == "__main__":
    raise SystemExit(main())
