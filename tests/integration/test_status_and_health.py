"""``celery -A proj reliable status`` and ``reliable health`` through the real command line.

Each test runs ``tests.worker_app`` against a private redis-server (broker, results and
store in databases 0 to 2) and an SQLite file, so it touches no shared state.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from celery_reliable import migrate
from celery_reliable.breaker.breaker import CircuitBreaker
from celery_reliable.bulkhead.bulkhead import Bulkhead
from celery_reliable.deadletter.record import DeadLetter
from celery_reliable.deadletter.store import DeadLetterStore
from celery_reliable.deferred.store import DeferredSet
from celery_reliable.locks.redis_lock import RedisLock
from celery_reliable.outbox.enqueue import enqueue
from celery_reliable.rate_guard import book
from celery_reliable.ratelimit.base import limiter_key
from celery_reliable.ratelimit.limit import Limit
from celery_reliable.scripts import Scripts
from tests.conftest import DATABASE_URL
from tests.harness import CELERY, ROOT, RedisServer

#: The breakers of tests.worker_app, and status-dep, which opens after 2 failures for 5 minutes.
BREAKERS: dict[str, dict[str, Any]] = {
    "ledger-dep": {"failure_threshold": 3, "recovery_timeout": 1.5},
    "ledger-dep-retry": {"failure_threshold": 3, "recovery_timeout": 1.5},
    "status-dep": {"failure_threshold": 2, "recovery_timeout": 300},
}
DEAD_PORT = "redis://:s3cret-pw@127.0.0.1:9/0"
DEAD_DATABASE = "postgresql+psycopg://root:pg-s3cret@127.0.0.1:9/test"


@pytest.fixture()
def setup(tmp_path: Path, private_redis: RedisServer) -> Iterator[dict[str, str]]:
    """The environment of tests.worker_app on a private Redis and a migrated SQLite file."""
    base = private_redis.url.rsplit("/", 1)[0]
    db_url = f"sqlite:///{tmp_path / 'status.db'}"
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    engine.dispose()
    yield {
        "TEST_BROKER_URL": f"{base}/0",
        "TEST_BACKEND_URL": f"{base}/1",
        "TEST_RELIABLE_REDIS": f"{base}/2",
        "TEST_LEDGER_REDIS": f"{base}/3",
        "TEST_DATABASE_URL": db_url,
        "TEST_EXTRA_SETTINGS": json.dumps({"reliable_circuit_breakers": BREAKERS}),
    }


def _celery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CELERY, "-A", "tests.worker_app", "reliable", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=60,
    )


def _status(env: dict[str, str]) -> dict[str, Any]:
    out = _celery(env, "status", "--json")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def _make_state(env: dict[str, str]) -> None:
    """An open breaker, a booked meter, a bulkhead slot, a held lock, parked tasks, a queued
    message, a dead letter and an outbox row."""
    store = redis.Redis.from_url(env["TEST_RELIABLE_REDIS"])
    breaker = CircuitBreaker("status-dep", store, **BREAKERS["status-dep"])
    for _ in range(2):
        breaker.record(breaker.allow(), "failure")
    assert breaker.state().state.value == "open"
    ledger = CircuitBreaker("ledger-dep", store, **BREAKERS["ledger-dep"])
    ledger.record(ledger.allow(), "failure")  # one failure: still closed
    meter = limiter_key("reliable", "task", "payments")  # limited_payment: key "payments", 2/s
    for _ in range(30):  # the 30th call's instant is ~14.5 s away
        book(store, meter, Limit(2, 1.0, burst=1), 1)
    assert Bulkhead("narrow", 2, client=store).try_acquire()
    lock = RedisLock(store, "report:2026-11-23", ttl=60, renew=False)
    assert lock.acquire()
    parked = DeferredSet(store, Scripts(store), "reliable")
    parked.park(DeferredSet.entry({"task": "tests.worker_app.add", "args": [1, 2]}, "rate-limited"), 600_000)
    parked.park(DeferredSet.entry({"task": "tests.worker_app.add", "args": [3, 4]}, "retry"), 0)
    broker = redis.Redis.from_url(env["TEST_BROKER_URL"])
    broker.lpush("reliable-tests", b"{}", b"{}", b"{}")
    engine = create_engine(env["TEST_DATABASE_URL"])
    DeadLetterStore(engine).add(DeadLetter("status-1", "exhausted", queue="reliable-tests", task_name="t"))
    DeadLetterStore(engine).add(DeadLetter("status-2", "poison", queue="reliable-tests", task_name="t"))
    with Session(engine) as session, session.begin():
        enqueue(session, "tests.worker_app.add", (1, 2))
    engine.dispose()


def test_status_json_shows_the_state_created(setup: dict[str, str]) -> None:
    _make_state(setup)
    report = _status(setup)
    breaker = report["breakers"]["status-dep"]
    assert breaker["state"] == "open" and breaker["generation"] == 1 and 200 < breaker["retry_after"] <= 300
    ledger = report["breakers"]["ledger-dep"]
    assert ledger["state"] == "closed" and ledger["consecutive_failures"] == 1 and ledger["retry_after"] == 0
    assert ledger["tasks"] == ["tests.worker_app.call_dependency"]
    assert report["breakers"]["rates"]["state"] == "closed"  # used by a task only
    limited = report["rate_limits"]["tests.worker_app.limited"]
    assert limited["limits"] == {"*": "20/s burst 1"} and limited["key"] == "tests.worker_app.limited"
    assert limited["backlog_seconds"] == 0
    payment = report["rate_limits"]["tests.worker_app.limited_payment"]
    assert payment["key"] == "payments" and 5 < payment["backlog_seconds"] <= 14.5
    tenant = report["rate_limits"]["tests.worker_app.tenant_call"]
    assert tenant["key"] == "tenant:{tenant}" and tenant["backlog_seconds"] is None
    assert report["bulkheads"]["narrow"]["in_use"] == 1 and report["bulkheads"]["narrow"]["size"] == 2
    assert report["bulkheads"]["critical"]["in_use"] == 0
    locks = report["locks"]
    assert locks["total"] == 1 and locks["complete"]
    (held,) = locks["locks"]
    assert held["name"] == "report:2026-11-23" and held["holder"].count(":") >= 2 and 50 < held["ttl_seconds"] <= 60
    deferred = report["deferred"]
    assert deferred["due"] == 2 and deferred["reasons"] == {"rate-limited": 1, "retry": 1}
    assert deferred["overdue_seconds"] >= 0 and deferred["next_due_seconds"] == 0
    assert report["queues"]["reliable-tests"] == 3 and report["queues"]["narrow"] == 0
    assert report["dead_letters"] == {"total": 2, "by_reason": {"exhausted": 1, "poison": 1}}
    outbox = report["outbox"]
    assert outbox["pending"] == 1 and outbox["dead"] == 0 and outbox["lag_seconds"] >= 0
    assert report["migrations"] == {"current": migrate.head_revision(), "head": migrate.head_revision()}
    assert report["idempotency_records"] == 0 and report["redis_warm"] is False
    _check_screen(setup)


def _check_screen(env: dict[str, str]) -> None:
    """The text screen names every section and shows the values."""
    out = _celery(env, "status")
    assert out.returncode == 0, out.stderr
    screen = out.stdout
    for line in (
        "status-dep             open      0 consecutive failures, probes in",
        "ledger-dep             closed    1 consecutive failure  tasks: tests.worker_app.call_dependency",
        "report:2026-11-23",
        "narrow                 1/2 in use",
        "due 2, in flight 0, broken 0",
        "reasons: rate-limited 1, retry 1",
        "dead letters   2 (exhausted 1, poison 1)",
        "outbox         pending 1, dead 0",
    ):
        assert line in screen, f"{line!r} not in:\n{screen}"


def test_status_survives_backends_down_and_masks_passwords(setup: dict[str, str]) -> None:
    env = {**setup, "TEST_RELIABLE_REDIS": DEAD_PORT, "TEST_DATABASE_URL": DEAD_DATABASE}
    started = time.monotonic()
    report = _status(env)
    assert time.monotonic() - started < 20
    for section in ("breakers", "rate_limits", "bulkheads", "locks", "deferred"):
        assert "Connection refused" in report[section]["unavailable"], section
    assert report["queues"]["reliable-tests"] == 0  # the broker is up
    for section in ("migrations", "idempotency_records", "dead_letters", "outbox"):
        assert "Connection refused" in report[section]["unavailable"], section
    screen = _celery(env, "status")
    assert screen.returncode == 0, screen.stderr
    assert "breakers       unavailable: ConnectionError" in screen.stdout
    everything = json.dumps(report) + screen.stdout + screen.stderr
    assert "s3cret-pw" not in everything and "pg-s3cret" not in everything
    assert report["database"] == "postgresql+psycopg://root:***@127.0.0.1:9/test"
    assert report["redis"] == "redis://:***@127.0.0.1:9/0" and "redis://:***@127.0.0.1:9/0" in screen.stdout


def test_health_passes_when_everything_answers(setup: dict[str, str]) -> None:
    live = _celery(setup, "health")
    assert live.returncode == 0, live.stderr
    assert live.stdout.startswith("ok    settings")
    ready = _celery(setup, "health", "--readiness", "--json")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    report = json.loads(ready.stdout)
    assert report["ok"] is True and report["failed"] == []
    assert [c["name"] for c in report["checks"]] == ["settings", "redis", "broker", "database"]
    assert all(c["ok"] and c["seconds"] < 2.5 for c in report["checks"])


def test_health_readiness_fails_naming_a_dead_redis(setup: dict[str, str]) -> None:
    env = {**setup, "TEST_RELIABLE_REDIS": DEAD_PORT}
    assert _celery(env, "health").returncode == 0  # liveness does not ask Redis
    started = time.monotonic()
    out = _celery(env, "health", "--readiness")
    assert time.monotonic() - started < 20
    assert out.returncode == 1
    assert "unhealthy: redis failed" in out.stderr
    assert "FAIL  redis     ConnectionError: Error 111 connecting to 127.0.0.1:9. Connection refused." in out.stdout
    assert "ok    broker" in out.stdout and "ok    database" in out.stdout
    assert "s3cret-pw" not in out.stdout + out.stderr
    js = _celery(env, "health", "--readiness", "--json")
    assert js.returncode == 1 and json.loads(js.stdout)["failed"] == ["redis"]


def test_health_readiness_fails_before_migrations(setup: dict[str, str], tmp_path: Path) -> None:
    env = {**setup, "TEST_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    out = _celery(env, "health", "--readiness")
    assert out.returncode == 1, out.stdout
    assert "FAIL  database  RuntimeError: migrations at none, head is" in out.stdout
    assert "reliable migrate" in out.stdout and "unhealthy: database failed" in out.stderr


def test_health_liveness_fails_on_bad_settings(setup: dict[str, str]) -> None:
    env = {**setup, "TEST_EXTRA_SETTINGS": json.dumps({"reliable_pump_batch": 0})}
    out = _celery(env, "health")
    assert out.returncode == 1
    assert "FAIL  settings" in out.stdout and "reliable_pump_batch" in out.stdout


def test_health_and_status_read_postgresql(setup: dict[str, str]) -> None:
    """Read only: nothing is written to or truncated in the shared test database."""
    probe = create_engine(DATABASE_URL)
    try:
        if migrate.current_revision(probe) != migrate.head_revision():
            pytest.skip("the test database is not migrated to head")
    finally:
        probe.dispose()
    env = {**setup, "TEST_DATABASE_URL": DATABASE_URL}
    ready = _celery(env, "health", "--readiness")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert f"migrations at head {migrate.head_revision()}" in ready.stdout
    report = _status(env)
    assert report["migrations"] == {"current": migrate.head_revision(), "head": migrate.head_revision()}
    assert set(report["dead_letters"]) == {"total", "by_reason"}
    assert set(report["outbox"]) == {"pending", "dead", "lag_seconds"}
