"""The beat service: the worker app plus its schedule: ``celery -A beat.app beat``.

The schedule is celery-reliable's maintenance jobs (``celery_reliable.beat_schedule``:
record cleanups in bounded batches, dead-letter retention, a deferred-set pump and lease
sweep as a backstop to the pump every worker runs) plus the application's own periodic
tasks.

Beat runs :class:`~celery_reliable.beat_leader.LeaderScheduler`: run two (or more) for
high availability. One holds the leader lease in Redis and sends; the others stand by
and take over within ``reliable_beat_lease`` if it dies. No tick is sent twice.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from celery_reliable import beat_schedule
from celery_reliable.install import LEADER_SCHEDULER
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
# workers.app installs with beat=False, so the scheduler is chosen here, explicitly.
app.conf.beat_scheduler = LEADER_SCHEDULER

__all__ = ["SCHEDULE", "app"]
