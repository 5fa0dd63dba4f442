"""The beat service: the worker app plus its schedule. Run exactly one: ``celery -A beat.app beat``.

The schedule is celery-reliable's maintenance jobs (idempotency-record cleanup in
bounded batches; a deferred-set pump and lease sweep, as a backstop to the pump every
worker runs) plus the application's own periodic tasks.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from celery_reliable import beat_schedule
from workers.app import app

#: The application's periodic tasks (sent by name; workers import the code).
APP_SCHEDULE: dict[str, dict[str, Any]] = {
    "refresh-report-nightly": {
        "task": "workers.tasks.refresh_report",
        "schedule": crontab(hour=2, minute=15),
        "options": {"expires": 3600},
    },
}

#: Everything beat sends: celery-reliable's jobs first, the application's may override.
SCHEDULE: dict[str, dict[str, Any]] = {**beat_schedule(app), **APP_SCHEDULE}

app.conf.beat_schedule = SCHEDULE

__all__ = ["SCHEDULE", "app"]
