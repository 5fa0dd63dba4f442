"""Shared fixtures: real Redis and PostgreSQL, clean state per test, worker processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from celery_reliable import migrate
from tests.harness import RedisServer, WorkerProcess

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
#: Redis databases the test worker app uses (tests/worker_app.py): broker, results,
#: reliable store, ledger.
TEST_DBS = {"broker": 10, "backend": 11, "reliable": 12, "ledger": 13}
REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The test database, migrated, with the effects ledger (no unique constraint)."""
    eng = create_engine(DATABASE_URL)
    migrate.upgrade(eng)
    with eng.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS effects_ledger (id bigserial PRIMARY KEY, key text NOT NULL, "
                "task_id text, pid int, amount int, at timestamptz DEFAULT now())"
            )
        )
    yield eng
    eng.dispose()


@pytest.fixture()
def clean(engine: Engine) -> Iterator[None]:
    """Empty Redis test databases and tables before each test that uses workers."""
    for db in TEST_DBS.values():
        redis.Redis.from_url(f"{REDIS}/{db}").flushdb()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE effects_ledger, reliable_idempotency, reliable_dead_letters"))
    from celery_reliable import clients

    clients.close_all()
    yield


@pytest.fixture()
def ledger() -> redis.Redis:
    """The ledger Redis (what happened, never deduplicated)."""
    return redis.Redis.from_url(f"{REDIS}/{TEST_DBS['ledger']}")


@pytest.fixture()
def workers(tmp_path: Path, clean: None) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker subprocesses; every one is stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", env: dict[str, str] | None = None, **kwargs: object) -> WorkerProcess:
        w = WorkerProcess(name, env or {}, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(w)
        return w.wait_ready()

    yield start
    for w in started:
        w.stop(grace=5)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that a test may flush, restart or kill."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def effects(engine: Engine) -> dict[str, int]:
    """Effects per key in the ledger (duplicates stay visible)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT key, count(*) FROM effects_ledger GROUP BY key")).all()
    return {k: n for k, n in rows}


def stored_results(engine: Engine) -> dict[str, str | None]:
    """Stored idempotency results per scoped key."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT key, result FROM reliable_idempotency")).all()
    return {k: r for k, r in rows}
