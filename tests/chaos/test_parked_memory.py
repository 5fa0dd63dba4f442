"""100,000 parked tasks cost the worker no memory: they wait in Redis, not in the worker."""

from __future__ import annotations

import time
from pathlib import Path

from celery_reliable.runtime import runtime
from tests.worker_app import app, later

PARKED = 100_000


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_parked_tasks_leave_worker_rss_flat(workers) -> None:
    w = workers("w1", {}, concurrency=2)
    pids = [w.pid, *w.children()]
    later.delay("warm").get(timeout=30)
    before = _rss_kib(pids)

    # A thousand through the public path (countdown beyond the threshold parks) ...
    with app.producer_or_acquire() as producer:
        results = [later.apply_async((f"p{i}",), countdown=3600, producer=producer) for i in range(1000)]
    # ... and the rest straight into the set, pipelined, as the pump would see them.
    deferred = runtime(app).deferred()
    sig = dict(later.signature(("bulk",), options={"queue": "reliable-tests"}))
    pipe = deferred.client.pipeline(transaction=False)
    for _ in range(PARKED - 1000):
        deferred.scripts.deferred_park(
            keys=[deferred.due_key], args=[3_600_000, deferred.entry(sig, "test")], client=pipe
        )
    pipe.execute()
    assert deferred.sizes()["due"] == PARKED
    # let the pump look at the full set many times (every 0.1 s in the test app)
    time.sleep(3)
    assert later.delay("after").get(timeout=30) == "after"
    after = _rss_kib(pids)

    assert all(r.state == "PENDING" for r in results[:10])
    assert deferred.sizes()["due"] == PARKED  # nothing leaked out early
    assert after - before < 20 * 1024, f"worker RSS grew by {(after - before) / 1024:.1f} MiB"
