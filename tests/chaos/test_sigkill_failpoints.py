"""SIGKILL a worker child at every phase of an execution: each effect happens once, none is lost."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import REDIS, TEST_DBS, effects, stored_results
from tests.harness import wait_until
from tests.worker_app import app, charge, charge_commit_on_exit, charge_then_fail

N = 8
LEDGER_URL = f"{REDIS}/{TEST_DBS['ledger']}"


@pytest.mark.parametrize("failpoint", ["after_claim", "before_commit", "after_commit", "before_ack"])
def test_sigkill_at_failpoint_applies_each_effect_exactly_once(failpoint, workers, ledger, engine: Engine) -> None:
    workers(
        "w1",
        {
            "CELERY_RELIABLE_FAILPOINTS": failpoint,
            "CELERY_RELIABLE_FAILPOINTS_URL": LEDGER_URL,
            "TEST_CLAIM_LEASE": "1.5",
        },
    )
    results = [charge.delay(f"order-{i}", 100 + i) for i in range(N)]

    outcomes = [r.get(timeout=90) for r in results]

    # the fault really fired: every task's child was SIGKILLed once at the failpoint
    assert int(ledger.get(f"failpoint:{failpoint}:fired") or 0) == N
    assert all(ledger.exists(f"failpoint:{failpoint}:{r.id}") for r in results)
    # each delivery that was killed came back at least once more
    assert ledger.llen("deliveries") >= 2 * N
    # exactly once: one effect per order, none lost, none doubled
    assert effects(engine) == {f"order-{i}": 1 for i in range(N)}
    stored = stored_results(engine)
    assert len(stored) == N
    # the result was committed with the effect, so even the run killed right after
    # the commit is answered with its real result
    assert [r.state for r in results] == ["SUCCESS"] * N
    assert outcomes == [{"order_id": f"order-{i}", "charged": 100 + i} for i in range(N)]


def test_worker_killed_whole_mid_task_is_recovered_by_another(workers, ledger, engine: Engine) -> None:
    """The whole worker (parent and children) dies while holding claims; a second worker finishes.

    With the Redis broker, a dead worker's unacknowledged messages come back after the
    transport's visibility timeout, kept short here.
    """
    env = {"TEST_CLAIM_LEASE": "1.5", "TEST_VISIBILITY_TIMEOUT": "4"}
    first = workers("w1", env, concurrency=2)
    results = [charge.delay(f"slow-{i}", i, hold=1.0) for i in range(6)]
    wait_until(lambda: ledger.llen("deliveries") >= 2, 30, what="two tasks to start")
    first.kill()
    workers("w2", env)

    for r in results:
        r.get(timeout=60)
    # the fault: the killed worker had started tasks that were delivered again
    assert ledger.llen("deliveries") > 6
    assert effects(engine) == {f"slow-{i}": 1 for i in range(6)}
    assert app.AsyncResult(results[0].id).state == "SUCCESS"


def test_failure_after_the_block_rolls_the_effect_back(workers, ledger, engine: Engine) -> None:
    workers("w1", {})
    assert charge_then_fail.delay("cf-1").get(timeout=30) == "cf-1"
    assert [int(x) for x in ledger.lrange("cf_bodies:cf-1", 0, -1)] == [0, 1]  # the body ran twice
    assert effects(engine) == {"cf-1": 1}  # the failed attempt's insert was rolled back


def test_commit_on_exit_keeps_effects_once_even_without_a_result(workers, ledger, engine: Engine) -> None:
    workers(
        "w1",
        {
            "CELERY_RELIABLE_FAILPOINTS": "after_commit",
            "CELERY_RELIABLE_FAILPOINTS_URL": LEDGER_URL,
            "TEST_CLAIM_LEASE": "1.5",
        },
    )
    results = [charge_commit_on_exit.delay(f"coe-{i}", i) for i in range(4)]
    outcomes = [r.get(timeout=60) for r in results]
    assert int(ledger.get("failpoint:after_commit:fired") or 0) == 4
    assert effects(engine) == {f"coe-{i}": 1 for i in range(4)}
    # committed at the end of the block, killed before the result was stored: documented None
    assert outcomes == [None] * 4
