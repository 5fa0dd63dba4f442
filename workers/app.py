"""The reference worker's Celery app, configured from the environment.

Run one worker per tier (see ``workers/README.md``; ``python -m workers <tier>`` builds
this command line from the environment)::

    celery -A workers.app worker -Q critical -n critical@%h
    celery -A workers.app worker -Q standard -n standard@%h
    celery -A workers.app worker -Q optional -n optional@%h

Environment:

* ``BROKER_URL``: Celery's broker (default ``redis://localhost:6379/0``).
* ``REDIS_URL``: celery-reliable's Redis: claims, cached results, the deferred set
  (default ``redis://localhost:6379/1``). Run it with ``maxmemory-policy noeviction``.
* ``RESULT_BACKEND``: Celery's result backend (default: none; results of keyed tasks
  are kept by celery-reliable anyway).
* ``DATABASE_URL``: idempotency records and the application's tables
  (default ``postgresql+psycopg://localhost/shop``; ``postgresql://`` is read as psycopg 3).
* ``WORKER_CONCURRENCY``: pool processes of this worker (default: one per CPU).
* ``VISIBILITY_TIMEOUT``: seconds before Redis redelivers an unacknowledged task
  (default 3600). Long countdowns go to the deferred set, so it need not cover them.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

import celery_reliable

# The tiers, most important first. A tier's workers only consume its queue, so a flood
# of optional work never takes a process from a charge (see workers/tiers.py).
from .tiers import TIERS

env = os.environ.get


def database_url(url: str) -> str:
    """``url`` with the psycopg 3 driver named (SQLAlchemy's default for postgresql is psycopg2)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


app = Celery("workers", broker=env("BROKER_URL", "redis://localhost:6379/0"),
             backend=env("RESULT_BACKEND") or None, include=["workers.tasks"])
app.conf.update(
    reliable_redis_url=env("REDIS_URL", "redis://localhost:6379/1"),
    reliable_database_url=database_url(env("DATABASE_URL", "postgresql+psycopg://localhost/shop")),
    task_queues=[Queue(tier, routing_key=tier) for tier in TIERS],
    task_default_queue="standard",
    task_routes={
        "workers.tasks.charge": {"queue": "critical"},
        "workers.tasks.send_receipt": {"queue": "standard"},
        "workers.tasks.refresh_report": {"queue": "optional"},
        "celery_reliable.*": {"queue": "standard"},  # the maintenance jobs beat sends
    },
    # At-least-once delivery: ack after the task ran, and put a task back when its
    # process dies; celery-reliable turns the redeliveries into exactly-once effects.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=int(env("WORKER_CONCURRENCY") or 0) or None,
    broker_transport_options={"visibility_timeout": int(env("VISIBILITY_TIMEOUT", "3600"))},
    broker_connection_retry_on_startup=True,
    # Flower needs events to show task states (including task-deduplicated / -deferred).
    worker_send_task_events=True,
    task_send_sent_event=True,
    result_expires=86400,
)
# The beat schedule lives in beat/app.py, so installing here leaves beat_schedule alone.
celery_reliable.install(app, beat=False)
