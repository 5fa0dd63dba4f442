"""A trip-booking saga: reserve a hotel, charge the card, issue tickets, or undo what was done.

Needs Redis and PostgreSQL on localhost (or the URLs below). From the repository root::

    python -m examples.saga

It migrates the database, starts a worker inside this process and books two trips. The
first completes; the second's ticket step fails, so the card is refunded and then the
hotel cancelled (last first), each once. Every step and compensation writes its row in
``task.transaction()``, which commits with the saga's progress, so a step driven twice
after a crash writes once. In a real deployment the saga lives in a module your workers
import, and ``celery -A proj reliable saga ls`` / ``saga status ID`` show the log.

Environment: ``SAGA_EXAMPLE_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``, keys under
``saga-example``), ``SAGA_EXAMPLE_DATABASE_URL`` (``postgresql+psycopg://root@127.0.0.1/test``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, text

import celery_reliable
from celery_reliable.saga import Saga, SagaSweeper, Step, saga_status

env = os.environ.get
REDIS = env("SAGA_EXAMPLE_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("travel", broker=REDIS)
app.conf.update(
    reliable_redis_url=REDIS,
    reliable_key_prefix="saga-example",
    reliable_database_url=env("SAGA_EXAMPLE_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test"),
    broker_transport_options={"global_keyprefix": "saga-example:"},
    task_default_queue="saga-example",
    task_ignore_result=True,
)
celery_reliable.install(app)
app.steps["worker"].add(SagaSweeper)  # drives steps whose worker died, and times sagas out


def _record(task: Any, what: str, trip: str) -> None:
    """One row per effect, in the step's transaction (commits with the saga's progress)."""
    with task.transaction() as session:
        session.execute(text("INSERT INTO example_trip_effects (trip, what) VALUES (:t, :w)"), {"t": trip, "w": what})


def reserve_hotel(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 1: its result is merged into the context every later step sees."""
    _record(task, "hotel reserved", ctx["trip"])
    return {"booking": f"H-{ctx['trip']}"}


def cancel_hotel(task: Any, ctx: dict[str, Any]) -> None:
    """Undo step 1 (the context still holds the booking)."""
    _record(task, f"hotel {ctx['booking']} cancelled", ctx["trip"])


def charge_card(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 2: ``task.request.idempotency_key`` is the key to hand a payment API."""
    _record(task, f"card charged {ctx['amount']}", ctx["trip"])
    return {"charge": task.request.idempotency_key}


def refund_card(task: Any, ctx: dict[str, Any]) -> None:
    """Undo step 2."""
    _record(task, f"card refunded {ctx['amount']}", ctx["trip"])


def issue_tickets(ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 3, the last: nothing to undo after it."""
    if ctx.get("sold_out"):
        raise RuntimeError("no seats left")
    return {"tickets": ["T-1", "T-2"]}


book_trip = Saga(
    "book_trip",
    steps=[
        Step(reserve_hotel, compensate=cancel_hotel, bind=True),
        Step(charge_card, compensate=refund_card, bind=True),
        Step(issue_tickets),
    ],
    timeout=timedelta(minutes=10),
    app=app,
)


def _wait(saga_id: str) -> dict[str, Any]:
    for _ in range(300):
        found = saga_status(app, saga_id)
        if found["state"] not in ("running", "compensating"):
            return found
        time.sleep(0.1)
    raise TimeoutError(saga_id)


def main() -> int:
    """Book two trips (the second fails at its last step); 0 if both ended as expected."""
    from celery.contrib.testing.worker import start_worker

    from celery_reliable.migrate import upgrade

    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)  # the second trip's failure is expected
    engine = create_engine(app.conf.reliable_database_url)
    upgrade(engine)  # `celery -A proj reliable migrate` does the same
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS example_trip_effects (id serial, trip text, what text)"))
    run = uuid.uuid4().hex[:6]
    outcome = []
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"):
        for trip, sold_out in ((f"trip-{run}-a", False), (f"trip-{run}-b", True)):
            saga_id = book_trip.start(app, {"trip": trip, "amount": 420, "sold_out": sold_out}, saga_id=trip)
            found = _wait(saga_id)
            outcome.append(found["state"])
            print(f"saga {saga_id}: {found['state']}" + (f" ({found['error']})" if found["error"] else ""))
            for step in found["step_states"]:
                print(f"  {step['index'] + 1}. {step['name']:14} {step['state']}")
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT what FROM example_trip_effects WHERE trip = :t ORDER BY id"), {"t": trip}
                )
                print("  effects:", "; ".join(r[0] for r in rows))
    engine.dispose()
    return 0 if outcome == ["completed", "compensated"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
