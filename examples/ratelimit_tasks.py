"""A global rate limit per tenant on a task: 5 calls a second per tenant, cluster-wide.

Needs a Redis on localhost (or the URLs below). From the repository root::

    python -m examples.ratelimit_tasks

It starts a worker inside this process (4 threads), then sends 20 calls for a noisy
tenant and, right after, 5 for a quiet one. Each tenant gets its own meter: the noisy
tenant's calls run 5 a second, evenly spaced, and the quiet tenant's calls are not stuck
behind them. The calls that must wait are parked in the deferred set (no thread held,
no retry spent), each with its own instant to come back. The check reads the instant
each body was admitted for (``self.request.rate_limit_slot``, on the Redis server's
clock): the limit holds on that clock, and a body starts a few milliseconds after it.

Environment: ``RATELIMIT_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``),
``RATELIMIT_REDIS_URL`` (``redis://127.0.0.1:6379/1``), ``RATELIMIT_BACKEND_URL``
(``redis://127.0.0.1:6379/2``).
"""

from __future__ import annotations

import os
import threading
import uuid

from celery import Celery

import celery_reliable
from celery_reliable import ReliableTask

env = os.environ.get

app = Celery(
    "partners",
    broker=env("RATELIMIT_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=env("RATELIMIT_BACKEND_URL", "redis://127.0.0.1:6379/2"),
)
app.conf.reliable_redis_url = env("RATELIMIT_REDIS_URL", "redis://127.0.0.1:6379/1")
app.conf.reliable_pump_interval = 0.05
celery_reliable.install(app)

#: (tenant, instant the call was admitted for, on the Redis server's clock, in seconds).
_starts: list[tuple[str, float]] = []
_lock = threading.Lock()
RUN = uuid.uuid4().hex[:6]  # a fresh meter per run of the example


@app.task(base=ReliableTask, bind=True, global_rate_limit="5/s", rate_limit_key="partner-api:{tenant}")
def call_partner(self: ReliableTask, tenant: str, n: int) -> int:
    """Call a partner API that allows each tenant 5 requests a second."""
    slot = self.request.rate_limit_slot  # {"key", "at_us", ...}: the instant the meter gave this call
    with _lock:
        _starts.append((tenant, slot["at_us"] / 1_000_000))
    return n


def main() -> int:
    """Run the example; 0 if each tenant stayed within 5 calls in any second."""
    from celery.contrib.testing.worker import start_worker

    noisy, quiet = f"noisy-{RUN}", f"quiet-{RUN}"
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING"):
        results = [call_partner.delay(noisy, i) for i in range(20)]
        results += [call_partner.delay(quiet, i) for i in range(5)]
        for result in results:
            result.get(timeout=60)
    ok = True
    t0 = min(t for _, t in _starts)
    for tenant in (noisy, quiet):
        times = sorted(t - t0 for who, t in _starts if who == tenant)
        busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
        ok = ok and busiest <= 5
        shown = " ".join(f"{t:.2f}" for t in times)
        print(f"{tenant.split('-')[0]:>5}: {len(times)} calls, at most {busiest} in any second; admitted at {shown} s")
    print("each tenant within 5/s:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
