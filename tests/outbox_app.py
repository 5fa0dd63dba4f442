"""The Celery app of the outbox tests: a consumer task, relays and workers run it.

Separate from tests/worker_app.py (own broker db, queue and database), configured from
``OUTBOX_*`` environment variables so each test points processes at its own queue.

The consumer deduplicates on the task id (= the outbox message id) the way a user's
would: it records the id in an inbox table and writes its effect in the same
transaction. Every delivery is also pushed to a ledger list that never deduplicates, so
a test sees duplicates that the inbox absorbed.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import celery_reliable

env = os.environ.get

BROKER_URL = env("OUTBOX_BROKER_URL", "redis://127.0.0.1:6379/1")
LEDGER_URL = env("OUTBOX_LEDGER_URL", "redis://127.0.0.1:6379/2")
DATABASE_URL = env("OUTBOX_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/outbox_test")
QUEUE = env("OUTBOX_QUEUE", "outbox-tests")

app = Celery("outbox_tests", broker=BROKER_URL)
app.conf.update(
    reliable_redis_url=LEDGER_URL,
    reliable_database_url=DATABASE_URL,
    reliable_outbox_listen=env("OUTBOX_LISTEN") == "1",
    reliable_outbox_batch=int(env("OUTBOX_BATCH", "200")),
    reliable_outbox_retry_base=0.2,
    reliable_outbox_retry_cap=1.0,
    reliable_outbox_poll_interval=float(env("OUTBOX_POLL_INTERVAL", "1.0")),
    reliable_check_redis=False,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=int(env("OUTBOX_PREFETCH", "1")),
    broker_connection_retry_on_startup=True,
)
celery_reliable.install(app, beat=False)

_ledger: redis.Redis | None = None
_engine: Engine | None = None


def ledger() -> redis.Redis:
    """This process's ledger client."""
    global _ledger
    if _ledger is None or _ledger.connection_pool.pid != os.getpid():
        _ledger = redis.Redis.from_url(LEDGER_URL)
    return _ledger


def engine() -> Engine:
    """This process's engine for the consumer's tables."""
    global _engine
    if _engine is None:
        _engine = create_engine(DATABASE_URL)
    return _engine


@app.task(name="outbox_tests.consume", bind=True)
def consume(self: object, run: str, key: str | None, seq: int) -> None:
    """Record the delivery, then apply the effect once per task id (inbox row + effect, one commit)."""
    task_id = self.request.id  # type: ignore[attr-defined]
    ledger().rpush(f"outbox:{run}:deliveries", json.dumps([task_id, key, seq]))
    with engine().begin() as conn:
        fresh = conn.execute(
            text(
                "INSERT INTO outbox_test_inbox (message_id, run) VALUES (:m, :r) "
                "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
            ),
            {"m": task_id, "r": run},
        ).first()
        if fresh is not None:
            conn.execute(
                text("INSERT INTO outbox_test_effects (run, message_id, key, seq) VALUES (:r, :m, :k, :s)"),
                {"r": run, "m": task_id, "k": key, "s": seq},
            )
