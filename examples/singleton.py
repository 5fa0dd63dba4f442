"""A singleton task: one report per day at a time, with its fencing token.

Needs a Redis on localhost (or the URLs below). From the repository root::

    python -m examples.singleton

It starts a worker inside this process (4 threads), submits the report of the same day
five times at once and of another day once, and shows that the same day's bodies never
overlapped (each waited, parked in the deferred set, not holding a worker thread) while
the other day ran alongside; each body got a newer fencing token than the one before.

Environment: ``SINGLETON_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``),
``SINGLETON_REDIS_URL`` (``redis://127.0.0.1:6379/1``), ``SINGLETON_BACKEND_URL``
(``redis://127.0.0.1:6379/2``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from celery import Celery

import celery_reliable
from celery_reliable import ReliableTask

env = os.environ.get

app = Celery(
    "reports",
    broker=env("SINGLETON_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=env("SINGLETON_BACKEND_URL", "redis://127.0.0.1:6379/2"),
)
app.conf.reliable_redis_url = env("SINGLETON_REDIS_URL", "redis://127.0.0.1:6379/1")
app.conf.reliable_pump_interval = 0.1  # bring parked tasks back quickly (the demo is short)
app.conf.reliable_defer_jitter = 0.1
celery_reliable.install(app)

_log: list[tuple[str, float, float, int]] = []
_log_lock = threading.Lock()


@app.task(base=ReliableTask, bind=True, lock_key="report:{day}", lock_ttl=10, on_locked="defer")
def build_report(self: ReliableTask, day: str) -> dict[str, Any]:
    """Build the report of ``day``; never two at once for the same day, cluster-wide."""
    start = time.monotonic()
    token = self.request.fencing_token  # pass it with every write to the report store
    time.sleep(0.3)  # the work
    self.check_lock()  # raises LockLost if the lease was lost meanwhile
    with _log_lock:
        _log.append((day, start, time.monotonic(), token))
    return {"day": day, "token": token}


def main() -> int:
    """Run the example; 0 if no two bodies of one day overlapped and tokens only grew."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"):
        results = [build_report.delay("2026-11-23") for _ in range(5)] + [build_report.delay("2026-11-24")]
        for result in results:
            result.get(timeout=60)
    ok = True
    for day in ("2026-11-23", "2026-11-24"):
        runs = sorted((start, end, token) for d, start, end, token in _log if d == day)
        print(f"{day}: {len(runs)} bodies")
        t0 = runs[0][0]
        for start, end, token in runs:
            print(f"  {start - t0:6.2f}s .. {end - t0:6.2f}s  fencing token {token}")
        for (_, end, token), (start, _, next_token) in itertools.pairwise(runs):
            ok = ok and start >= end and next_token > token
    print("never overlapped, tokens increasing:" if ok else "OVERLAP or token order broken:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
