"""A tiny app for ``celery beat`` tests: one entry every second, a short leader lease.

Environment:
    TEST_BEAT_REDIS: broker and reliable store (default ``redis://127.0.0.1:6379/9``).
    TEST_BEAT_PREFIX: ``reliable_key_prefix`` (default ``beat-test``).
    TEST_BEAT_LEASE: ``reliable_beat_lease`` in seconds (default 3).

No worker runs: the tests read the sent messages straight from the ``beat-tests`` list.
The scheduler is the one :func:`celery_reliable.install` picks (no ``beat_scheduler`` here).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import Celery

import celery_reliable
from celery_reliable.beat_leader import LeaderScheduler

QUEUE = "beat-tests"
TASK = "beat_app.tick"
REDIS_URL = os.environ.get("TEST_BEAT_REDIS", "redis://127.0.0.1:6379/9")


app = Celery("beat_app", broker=REDIS_URL)
app.conf.reliable_redis_url = REDIS_URL
app.conf.reliable_key_prefix = os.environ.get("TEST_BEAT_PREFIX", "beat-test")
app.conf.reliable_beat_lease = float(os.environ.get("TEST_BEAT_LEASE", "3"))
app.conf.beat_schedule = {"tick-every-second": {"task": TASK, "schedule": 1.0, "options": {"queue": QUEUE}}}
celery_reliable.install(app)


class StopBeforeClaimScheduler(LeaderScheduler):
    """The worst pause: SIGSTOP itself once, after renewing the lease, right before a claim.

    Marks the pause in Redis (``<prefix>:test:stopped-before-claim``) so the test knows
    the fault fired, and the claim it wakes up to is the one a stale leader would make.
    """

    def reserve(self, entry: Any) -> Any:
        """Stop this process the first time an entry is due, then claim as usual."""
        if not self.__dict__.get("_stopped_once"):
            self.__dict__["_stopped_once"] = True
            self._redis().set(f"{self.app.conf.reliable_key_prefix}:test:stopped-before-claim", os.getpid())
            os.kill(os.getpid(), signal.SIGSTOP)
            self._redis().set(f"{self.app.conf.reliable_key_prefix}:test:resumed", os.getpid())
        return super().reserve(entry)
