"""Crash points for fault-injection tests; inert unless the environment enables them.

``CELERY_RELIABLE_FAILPOINTS=after_claim,before_commit`` makes a worker process SIGKILL
itself the first time each task id reaches one of the named points. Each firing is
recorded in Redis (``CELERY_RELIABLE_FAILPOINTS_URL``, default the reliable Redis) under
``failpoint:<name>:<task id>`` and counted in ``failpoint:<name>:fired`` so a test can
prove its fault happened. Points: ``after_claim``, ``before_commit``, ``after_commit``,
``before_ack``.
"""

from __future__ import annotations

import os
import signal

_ENABLED = frozenset(filter(None, os.environ.get("CELERY_RELIABLE_FAILPOINTS", "").split(",")))


def hit(name: str, task_id: str | None, redis_url: str) -> None:
    """Crash this process at ``name`` once per task id, when that point is enabled."""
    if name not in _ENABLED or not task_id:
        return
    import redis

    client = redis.Redis.from_url(os.environ.get("CELERY_RELIABLE_FAILPOINTS_URL", redis_url))
    try:
        if client.set(f"failpoint:{name}:{task_id}", os.getpid(), nx=True, ex=3600):
            client.incr(f"failpoint:{name}:fired")
            os.kill(os.getpid(), signal.SIGKILL)
    finally:
        client.close()
