"""Helpers shared by the outbox tests: their own database, queues and ledger keys.

The outbox tests use database ``outbox_test`` (created and migrated here), broker Redis
db 1 and ledger Redis db 2, and a fresh queue name and run id per test, so they never
touch the rows or keys of other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from celery_reliable import migrate
from tests.harness import ROOT

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
DATABASE_URL = "postgresql+psycopg://root@127.0.0.1/outbox_test"
BROKER_URL = "redis://127.0.0.1:6379/1"
LEDGER_URL = "redis://127.0.0.1:6379/2"


def outbox_engine() -> Engine:
    """The ``outbox_test`` database, created if missing, migrated, with the consumer's tables."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'outbox_test'")).first() is None:
            conn.execute(text("CREATE DATABASE outbox_test"))
    admin.dispose()
    eng = create_engine(DATABASE_URL)
    migrate.upgrade(eng)
    with eng.begin() as conn:
        conn.execute(
            text("CREATE TABLE IF NOT EXISTS outbox_test_inbox (message_id text PRIMARY KEY, run text NOT NULL)")
        )
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS outbox_test_effects (id bigserial PRIMARY KEY, run text NOT NULL, "
                "message_id text NOT NULL, key text, seq int NOT NULL)"
            )
        )
    return eng


def reset_outbox(eng: Engine) -> None:
    """Empty the outbox table (only the outbox tests use this database)."""
    with eng.begin() as conn:
        conn.execute(text("TRUNCATE reliable_outbox"))


def new_run() -> str:
    """A run id: names the test's queue and ledger keys."""
    return uuid.uuid4().hex[:12]


def queue_for(run: str) -> str:
    """The broker queue of a run."""
    return f"outbox-{run}"


def broker_messages(queue: str) -> list[dict[str, Any]]:
    """Messages waiting in a Redis-broker queue, oldest first: ``{"id", "task", "args"}``."""
    client = redis.Redis.from_url(BROKER_URL)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    out = []
    for item in reversed(raw):  # kombu LPUSHes and BRPOPs: the list's tail is the oldest
        msg = json.loads(item)
        import base64

        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"id": msg["headers"]["id"], "task": msg["headers"]["task"], "args": body[0]})
    return out


def drop_queue(queue: str) -> None:
    """Delete a run's broker queue."""
    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.delete(queue)
    finally:
        client.close()


def deliveries(run: str) -> list[tuple[str, str | None, int]]:
    """Every delivery the consumer saw in a run, in order (duplicates kept)."""
    client = redis.Redis.from_url(LEDGER_URL)
    try:
        return [tuple(json.loads(x)) for x in client.lrange(f"outbox:{run}:deliveries", 0, -1)]  # type: ignore[misc]
    finally:
        client.close()


def forget_run(run: str) -> None:
    """Delete a run's ledger keys."""
    client = redis.Redis.from_url(LEDGER_URL)
    try:
        client.delete(f"outbox:{run}:deliveries")
    finally:
        client.close()


def effects(eng: Engine, run: str) -> Counter[str]:
    """Effects per message id of a run (the effects table has no unique constraint)."""
    with eng.connect() as conn:
        rows = conn.execute(
            text("SELECT message_id, count(*) FROM outbox_test_effects WHERE run = :r GROUP BY message_id"),
            {"r": run},
        ).all()
    return Counter({m: n for m, n in rows})


def states(eng: Engine) -> Counter[str]:
    """Outbox rows per state."""
    with eng.connect() as conn:
        return Counter(dict(conn.execute(text("SELECT state, count(*) FROM reliable_outbox GROUP BY state")).all()))


def spawn_relay(queue: str, log: Path, extra_env: dict[str, str] | None = None, *args: str) -> subprocess.Popen[bytes]:
    """Start a relay subprocess (``python -m tests.outbox_relay``) in its own session."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTBOX_QUEUE": queue, **(extra_env or {})}
    out = open(log, "ab")  # noqa: SIM115 - the child keeps it; closed when the test's tmp dir goes
    return subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_relay", *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def make_app(broker_url: str = BROKER_URL, **conf: Any) -> Any:
    """A Celery app for in-process relays, with the consumer's task name registered (no body)."""
    from celery import Celery

    app = Celery(f"outbox-{uuid.uuid4().hex[:6]}", broker=broker_url, set_as_current=False)
    settings: dict[str, Any] = {
        "reliable_redis_url": LEDGER_URL,
        "reliable_database_url": DATABASE_URL,
        "broker_connection_retry_on_startup": True,
    }
    app.conf.update({**settings, **conf})

    @app.task(name="outbox_tests.consume", shared=False)
    def consume(run: str, key: str | None, seq: int) -> None:  # never runs here: the relay only publishes
        raise AssertionError("not a consumer")

    return app


def order_violations(eng: Engine, run: str) -> int:
    """Effects of a key applied after an effect with a higher sequence number of the same key."""
    with eng.connect() as conn:
        rows = conn.execute(
            text("SELECT key, seq FROM outbox_test_effects WHERE run = :r AND key IS NOT NULL ORDER BY id"),
            {"r": run},
        ).all()
    highest: dict[str, int] = {}
    bad = 0
    for key, seq in rows:
        if seq < highest.get(key, -1):
            bad += 1
        highest[key] = max(seq, highest.get(key, -1))
    return bad
