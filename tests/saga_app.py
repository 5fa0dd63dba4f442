"""The Celery app of the saga tests: a trip-booking saga whose steps count what they do.

Workers run it with ``app="tests.saga_app"``. Everything lives under one run id
(``SAGA_TEST_RUN``, made here on first import and inherited by the workers): Redis db 0
keys under ``saga-tests:<run>``, the broker's keys under the same prefix, queue
``saga-tests-<run>``. Tasks are acknowledged before they run (Celery's default), so a
SIGKILLed step is not redelivered by the broker: only the saga sweep brings it back.

Each step and compensation pushes one ledger entry per body execution (Redis, never
deduplicated) and writes one row into ``saga_test_effects`` in its transaction (no
unique constraint), so duplicates of either kind stay visible. The payload steers the
faults: ``fail_at`` (a step raises), ``kill_in`` / ``kill_undo`` (a step or compensation
SIGKILLs its own process once, after writing its row and before the commit), ``sleep``
(``{step: seconds}``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from sqlalchemy import text

import celery_reliable
from celery_reliable.saga import Saga, SagaSweeper, Step

env = os.environ.get

RUN = os.environ.setdefault("SAGA_TEST_RUN", uuid.uuid4().hex[:10])
PREFIX = f"saga-tests:{RUN}"
QUEUE = f"saga-tests-{RUN}"
REDIS_URL = env("SAGA_TEST_REDIS", "redis://127.0.0.1:6379/0")
DATABASE_URL = env("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
#: The lease of every step: how long a step whose worker died waits before the sweep sends it again.
LEASE = 1.5

app = Celery("saga_tests", broker=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_key_prefix=PREFIX,
    reliable_database_url=DATABASE_URL,
    reliable_claim_lease=1.5,
    reliable_busy_delay=0.3,
    reliable_defer_jitter=0.1,
    reliable_pump_interval=0.1,
    reliable_check_redis=False,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"global_keyprefix": f"{PREFIX}:broker:"},
    broker_connection_retry_on_startup=True,
)
celery_reliable.install(app, beat=False)


class FastSweeper(SagaSweeper):
    """Sweep every 0.3 s (tests wait for leases of 1.5 s)."""

    interval = 0.3


app.steps["worker"].add(FastSweeper)

_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    """This process's ledger client (keys under the run's prefix)."""
    global _ledger
    if _ledger is None or _ledger.connection_pool.pid != os.getpid():
        _ledger = redis.Redis.from_url(REDIS_URL)
    return _ledger


def key(*parts: str) -> str:
    """A ledger key of this run."""
    return ":".join((PREFIX, "ledger", *parts))


def _act(task: Any, ctx: dict[str, Any], what: str) -> None:
    """Count the body, write the effect row in the step's transaction, then maybe crash or fail."""
    saga_id = task.request.kwargs.get("saga_id") if task.request.kwargs else None
    saga_id = saga_id or task.request.args[0]
    ledger().rpush(key("bodies", saga_id), what)
    delay = (ctx.get("sleep") or {}).get(what, 0)
    if delay:
        time.sleep(delay)
    if ctx.get("fail_at") == what:
        raise RuntimeError(f"{what} refused")
    with task.transaction() as session:
        session.execute(
            text("INSERT INTO saga_test_effects (saga_id, what, pid) VALUES (:s, :w, :p)"),
            {"s": saga_id, "w": what, "p": os.getpid()},
        )
        if what in (ctx.get("kill_in"), ctx.get("kill_undo")) and ledger().set(
            key("killed", saga_id, what), os.getpid(), nx=True
        ):
            os.kill(os.getpid(), signal.SIGKILL)  # effect written, not committed


def reserve_hotel(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 1: book a room."""
    _act(task, ctx, "reserve_hotel")
    return {"hotel_booking": f"H-{ctx['trip']}"}


def cancel_hotel(task: Any, ctx: dict[str, Any]) -> None:
    """Undo step 1: needs the booking step 1 put in the context."""
    assert ctx["hotel_booking"] == f"H-{ctx['trip']}"
    _act(task, ctx, "undo:reserve_hotel")


def charge_card(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 2: charge the card (sees step 1's booking)."""
    _act(task, ctx, "charge_card")
    return {"charge": f"C-{ctx['hotel_booking']}"}


def refund_card(task: Any, ctx: dict[str, Any]) -> None:
    """Undo step 2."""
    assert ctx["charge"] == f"C-H-{ctx['trip']}"
    _act(task, ctx, "undo:charge_card")


def issue_tickets(task: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """Step 3: issue the tickets."""
    _act(task, ctx, "issue_tickets")
    return {"tickets": [ctx["charge"], "T-1"]}


def _steps() -> list[Step]:
    return [
        Step(reserve_hotel, compensate=cancel_hotel, bind=True, lease=LEASE),
        Step(charge_card, compensate=refund_card, bind=True, lease=LEASE),
        Step(issue_tickets, bind=True, lease=LEASE),
    ]


#: The saga the tests start; the default timeout (2 h).
trip = Saga("trip", steps=_steps(), app=app)

#: The same steps with a 2 s saga-wide timeout.
quick_trip = Saga("quick_trip", steps=_steps(), timeout=2.0, app=app)


# -- helpers for the tests (the test process imports this module too) -----------------------


def setup_tables(engine: Any) -> None:
    """Migrate the test database and create the effects table (no unique constraint)."""
    from celery_reliable import migrate

    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS saga_test_effects (id bigserial PRIMARY KEY, saga_id text NOT NULL, "
                "what text NOT NULL, pid int, at timestamptz DEFAULT clock_timestamp())"
            )
        )


def committed(engine: Any, saga_id: str) -> list[str]:
    """The effects the saga's steps and compensations committed, in commit order."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT what FROM saga_test_effects WHERE saga_id = :s ORDER BY id"), {"s": saga_id}
        ).all()
    return [r[0] for r in rows]


def bodies(saga_id: str) -> list[str]:
    """Every body execution of the saga's steps and compensations, in order (duplicates kept)."""
    return [b.decode() for b in ledger().lrange(key("bodies", saga_id), 0, -1)]


def killed(saga_id: str, what: str) -> bool:
    """Whether a body SIGKILLed itself for this saga at ``what``."""
    return bool(ledger().exists(key("killed", saga_id, what)))


def wait_state(saga_id: str, states: tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
    """Poll the saga log until the saga is in one of ``states``; return its status."""
    from celery_reliable.saga import saga_status

    deadline = time.monotonic() + timeout
    while True:
        found = saga_status(app, saga_id)
        if found["state"] in states:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"saga {saga_id} still {found['state']} after {timeout}s: {found}")
        time.sleep(0.1)


def drop_keys() -> None:
    """Delete every Redis key of this run (ledger, broker, reliable)."""
    client = ledger()
    batch = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
    for i in range(0, len(batch), 500):
        client.delete(*batch[i : i + 500])


def drop_rows(engine: Any, saga_ids: list[str]) -> None:
    """Delete the saga log rows and effects of ``saga_ids``."""
    if not saga_ids:
        return
    with engine.begin() as conn:
        for table in ("reliable_saga_log", "reliable_sagas", "saga_test_effects"):
            conn.execute(text(f"DELETE FROM {table} WHERE saga_id = ANY(:ids)"), {"ids": saga_ids})


@contextmanager
def database(started: list[str]) -> Iterator[Any]:
    """The test database with the saga tables; the rows of ``started`` are dropped after."""
    from sqlalchemy import create_engine

    eng = create_engine(DATABASE_URL)
    setup_tables(eng)
    try:
        yield eng
    finally:
        drop_rows(eng, started)
        eng.dispose()


@contextmanager
def running_worker(name: str, log_dir: Any, env: dict[str, str] | None = None) -> Iterator[Any]:
    """A prefork worker (2 processes) running this app; stopped, and the run's keys dropped, after."""
    from tests.harness import WorkerProcess  # not in the worker itself

    w = WorkerProcess(name, {"TEST_QUEUE": QUEUE, **(env or {})}, log_dir, app="tests.saga_app", concurrency=2)
    try:
        yield w.wait_ready()
    finally:
        w.stop(grace=5)
        drop_keys()


def book_room_with_a_set(ctx: dict[str, Any]) -> dict[str, Any]:
    """A step whose result JSON cannot hold (a set)."""
    return {"rooms": {1, 2}}


#: A saga whose second step returns a value that cannot go into the context.
odd_trip = Saga(
    "odd_trip",
    steps=[Step(reserve_hotel, compensate=cancel_hotel, bind=True, lease=LEASE), book_room_with_a_set],
    app=app,
)
