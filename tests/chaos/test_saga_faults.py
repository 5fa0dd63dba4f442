"""Sagas under SIGKILL: every step and compensation applies once, in order, whatever dies when.

The worker acknowledges tasks before running them (Celery's default), so a killed step's
message is gone: only the saga log and its sweep can bring the step back. On top of the
kills each test injects, the failpoint ``saga_before_send`` SIGKILLs the worker process
after every step's and compensation's commit and before it sends the next task, once per
saga step: each next task is then sent by the sweep, after the lease (1.5 s) runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import Engine

from celery_reliable.saga import COMPENSATED, COMPLETED
from tests import saga_app
from tests.harness import WorkerProcess
from tests.saga_app import bodies, committed, killed, trip, wait_state

STARTED: list[str] = []
FAILPOINT = "saga_before_send"


@pytest.fixture(scope="module")
def db() -> Iterator[Engine]:
    with saga_app.database(STARTED) as eng:
        yield eng


@pytest.fixture(scope="module")
def worker(db: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = {"CELERY_RELIABLE_FAILPOINTS": FAILPOINT, "CELERY_RELIABLE_FAILPOINTS_URL": saga_app.REDIS_URL}
    try:
        with saga_app.running_worker("saga-chaos", tmp_path_factory.mktemp("saga-faults"), env) as w:
            yield w
    finally:
        client = redis.Redis.from_url(saga_app.REDIS_URL)
        for saga_id in STARTED:  # the failpoint's own records (not under the run's prefix)
            for k in client.scan_iter(match=f"failpoint:{FAILPOINT}:{saga_id}:*"):
                client.delete(k)


def _start(**payload: object) -> str:
    saga_id = trip.start(saga_app.app, {"trip": uuid.uuid4().hex[:8], **payload})
    STARTED.append(saga_id)
    return saga_id


def _send_kills(saga_id: str) -> list[str]:
    """The steps after whose commit the failpoint killed the worker process."""
    client = redis.Redis.from_url(saga_app.REDIS_URL)
    return sorted(
        k.decode().rsplit(":", 3)[-2] + ":" + k.decode().rsplit(":", 1)[-1]
        for k in client.scan_iter(match=f"failpoint:{FAILPOINT}:{saga_id}:*")
    )


def _redriven(status: dict[str, object]) -> int:
    return sum(1 for e in status["log"] if e["event"] == "redriven")  # type: ignore[attr-defined, index]


def test_compensations_run_in_reverse_once_each_when_one_is_killed(worker: WorkerProcess, db: Engine) -> None:
    """(a) Step 3 fails; the compensation of step 2 is SIGKILLed mid-body; 2 then 1 are undone, once each."""
    saga_id = _start(fail_at="issue_tickets", kill_undo="undo:charge_card")
    done = wait_state(saga_id, (COMPLETED, COMPENSATED, "failed"), timeout=40)

    # the faults really fired: the compensation killed itself before its commit, and the
    # worker died after each commit before sending the next task
    assert killed(saga_id, "undo:charge_card")
    assert _send_kills(saga_id) == ["compensate:0", "compensate:1", "do:0", "do:1"]
    assert done["state"] == COMPENSATED and done["reason"] == "step_failed" and done["failed_step"] == 2
    # committed effects: once each, compensations in reverse order
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "undo:charge_card", "undo:reserve_hotel"]
    # the killed compensation's body ran twice (its first transaction rolled back)
    assert bodies(saga_id) == [
        "reserve_hotel",
        "charge_card",
        "issue_tickets",
        "undo:charge_card",
        "undo:charge_card",
        "undo:reserve_hotel",
    ]
    # the sweep sent the next task after each of the 3 kills that lost it, and the killed compensation again
    assert _redriven(done) >= 4


def test_a_step_killed_mid_body_resumes_and_every_step_applies_once(worker: WorkerProcess, db: Engine) -> None:
    """(b) The second step's process is SIGKILLed before its commit; the saga completes after the sweep."""
    saga_id = _start(kill_in="charge_card")
    done = wait_state(saga_id, (COMPLETED, COMPENSATED, "failed"), timeout=40)

    assert killed(saga_id, "charge_card")
    assert _send_kills(saga_id) == ["do:0", "do:1", "do:2"]
    assert done["state"] == COMPLETED
    assert committed(db, saga_id) == ["reserve_hotel", "charge_card", "issue_tickets"]
    assert bodies(saga_id) == ["reserve_hotel", "charge_card", "charge_card", "issue_tickets"]
    tid = done["context"]["trip"]
    assert done["context"]["tickets"] == [f"C-H-{tid}", "T-1"]
    # the sweep sent the killed step again, and the next step after each send the failpoint prevented
    assert _redriven(done) >= 3
