"""The ``celery reliable`` commands and the beat maintenance jobs."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

from sqlalchemy import text, update
from sqlalchemy.engine import Engine

from celery_reliable.idempotency import db_store
from celery_reliable.maintenance import (
    CLEANUP_HTTP_TASK,
    CLEANUP_INBOX_TASK,
    CLEANUP_OUTBOX_TASK,
    CLEANUP_TASK,
    PUMP_TASK,
    PURGE_DEAD_LETTERS_TASK,
    RELAY_OUTBOX_TASK,
    beat_schedule,
    cleanup_idempotency,
    pump_deferred,
)
from celery_reliable.migrate import head_revision
from celery_reliable.runtime import runtime
from celery_reliable.saga.sweeper import SWEEP_TASK
from celery_reliable.schema import idempotency
from tests.harness import CELERY, ROOT
from tests.worker_app import app, later


def _celery(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CELERY, "-A", "tests.worker_app", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_migrate_and_status_commands(clean) -> None:
    out = _celery("reliable", "migrate")
    assert out.returncode == 0, out.stderr
    assert f"at revision {head_revision()}" in out.stdout and "root@" in out.stdout
    later.apply_async(("x",), countdown=600)
    status = _celery("reliable", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["deferred"]["due"] == 1
    assert report["migrations"] == {"current": head_revision(), "head": head_revision()}
    assert head_revision().startswith("0009")


def test_cleanup_deletes_only_expired_records(clean, engine: Engine) -> None:
    eng = runtime(app).engine()
    for i in range(5):
        db_store.store_result(eng, f"k{i}", "t", "fp", f"id{i}", "1", 60_000, committed=False)
    with eng.begin() as conn:
        conn.execute(
            update(idempotency)
            .where(idempotency.c.key.in_(["k0", "k1", "k2"]))
            .values(expires_at=db_store.utcnow() - timedelta(seconds=1))
        )
    assert cleanup_idempotency(app) == {"deleted": 3}
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reliable_idempotency")).scalar() == 2


def test_beat_entries_and_pump_task(clean) -> None:
    schedule = beat_schedule(app)
    jobs = {
        CLEANUP_TASK,
        CLEANUP_INBOX_TASK,
        CLEANUP_HTTP_TASK,
        RELAY_OUTBOX_TASK,
        CLEANUP_OUTBOX_TASK,
        PUMP_TASK,
        PURGE_DEAD_LETTERS_TASK,
        SWEEP_TASK,
    }
    assert {e["task"] for e in schedule.values()} == jobs
    assert jobs <= set(app.tasks)
    assert set(schedule) <= set(app.conf.beat_schedule)  # install() merged them
    later.apply_async(("y",), countdown=2)
    deferred = runtime(app).deferred()
    assert pump_deferred(app)["moved"] == 0  # not due yet
    deferred.client.zadd(deferred.due_key, {m: 0 for m in deferred.client.zrange(deferred.due_key, 0, -1)})
    assert pump_deferred(app)["moved"] == 1
    assert deferred.sizes()["due"] == 0
