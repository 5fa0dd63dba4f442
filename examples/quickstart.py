"""The README quick start, runnable: a ``charge`` task whose payment happens exactly once.

Needs a Redis on localhost (or the URLs below). From the repository root::

    python -m examples.quickstart

It migrates the database, starts a worker inside this process, submits the same order
three times (a user double-clicking twice) and shows one payment row and three
identical results. The worker is embedded only to make this one command; in a real
deployment the app lives in a module and runs under ``celery -A proj worker`` (see
``workers/``).

Environment: ``QUICKSTART_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``),
``QUICKSTART_REDIS_URL`` (``redis://127.0.0.1:6379/1``), ``QUICKSTART_BACKEND_URL``
(``redis://127.0.0.1:6379/2``), ``QUICKSTART_DATABASE_URL``
(``sqlite:///quickstart.sqlite``; or ``postgresql+psycopg://user@host/db``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery
from sqlalchemy import String, create_engine, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import celery_reliable
from celery_reliable import ReliableTask

env = os.environ.get

# --- the quick start -----------------------------------------------------------------

app = Celery("shop", broker=env("QUICKSTART_BROKER_URL", "redis://127.0.0.1:6379/0"),
             backend=env("QUICKSTART_BACKEND_URL", "redis://127.0.0.1:6379/2"))
app.conf.reliable_redis_url = env("QUICKSTART_REDIS_URL", "redis://127.0.0.1:6379/1")
app.conf.reliable_database_url = env("QUICKSTART_DATABASE_URL", "sqlite:///quickstart.sqlite")
app.conf.task_acks_late = True  # at-least-once: a task whose worker dies is redelivered ...
app.conf.task_reject_on_worker_lost = True
celery_reliable.install(app)  # ... and celery-reliable makes the redeliveries harmless


class Base(DeclarativeBase):
    """The application's tables."""


class Payment(Base):
    """A charge. No unique constraint on ``order_id``: the task is what keeps it single."""

    __tablename__ = "quickstart_payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int]


@app.task(base=ReliableTask, bind=True, idempotency_key="charge:{order_id}")
def charge(self: ReliableTask, order_id: str, amount: int) -> dict[str, Any]:
    """Charge ``order_id`` once, however often it is submitted or redelivered."""
    with self.transaction() as session:  # one commit: the effect and the idempotency record
        session.execute(insert(Payment).values(order_id=order_id, amount=amount))
    return {"charged": amount}


# --- running it ----------------------------------------------------------------------


def main() -> int:
    """Migrate, start an embedded worker, double-click an order; 0 if it was charged once."""
    from celery.contrib.testing.worker import start_worker

    from celery_reliable.migrate import upgrade

    engine = create_engine(app.conf.reliable_database_url)
    upgrade(engine)  # celery-reliable's tables; `celery -A proj reliable migrate` does the same
    Base.metadata.create_all(engine)  # the application's own table

    order_id = f"order-{uuid.uuid4().hex[:8]}"
    with start_worker(app, pool="threads", concurrency=3, perform_ping_check=False, loglevel="WARNING"):
        results = [charge.delay(order_id=order_id, amount=4200) for _ in range(3)]
        answers = [result.get(timeout=30) for result in results]
    with Session(engine) as session:
        rows = session.scalars(select(Payment).where(Payment.order_id == order_id)).all()
    engine.dispose()

    print(f"submitted {order_id} {len(results)} times")
    for result, answer in zip(results, answers, strict=True):
        print(f"  task {result.id}: {answer}")
    print(f"payment rows for {order_id}: {len(rows)}")
    return 0 if len(rows) == 1 and all(a == answers[0] for a in answers) else 1


if __name__ == "__main__":
    raise SystemExit(main())
