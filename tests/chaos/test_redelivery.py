"""A task redelivered while its first run is still going never runs twice at once."""

from __future__ import annotations

from tests.worker_app import slow_job


def test_redelivery_past_visibility_timeout_does_not_run_concurrently(workers, ledger) -> None:
    env = {"TEST_VISIBILITY_TIMEOUT": "1", "TEST_CLAIM_LEASE": "2", "TEST_BUSY_DELAY": "0.3"}
    workers("w1", env, concurrency=2)
    workers("w2", env, concurrency=2)
    results = [slow_job.delay(f"job-{i}", 5.0) for i in range(2)]
    assert [r.get(timeout=90) for r in results] == ["job-0", "job-1"]

    deliveries = [d.decode() for d in ledger.lrange("deliveries", 0, -1)]
    # the fault: the broker redelivered each job while it ran (visibility timeout 1 s < 5 s)
    for r in results:
        assert deliveries.count(f"tests.worker_app.slow_job:{r.id}") >= 2
    for i in range(2):
        assert [int(x) for x in ledger.lrange(f"max_running:job-{i}", 0, -1)] == [1]
    assert sorted(b.decode() for b in ledger.lrange("bodies", 0, -1)) == ["job-0", "job-1"]
