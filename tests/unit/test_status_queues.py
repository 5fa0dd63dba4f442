"""Which queues ``reliable status`` reads the depth of."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

import celery_reliable
from celery_reliable.config import get_config
from celery_reliable.status.queues import queue_names


def test_queues_from_defaults_queues_routes_tasks_and_tiers() -> None:
    app = Celery("q", broker="redis://127.0.0.1:9/0", set_as_current=False)
    app.conf.update(
        task_default_queue="default",
        task_queues=[Queue("fast"), Queue("slow")],
        task_routes=[{"a.*": {"queue": "routed"}, "b": "plain"}, lambda *a, **k: None],
        reliable_bulkheads={"gold": 5},
    )
    celery_reliable.install(app)

    @app.task(shared=False, queue="own")
    def job() -> None: ...

    assert queue_names(app, get_config(app)) == ["default", "fast", "gold", "own", "plain", "routed", "slow"]
