"""A real worker with ``reliable_log_json = True`` writes its decisions as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from tests.conftest import effects
from tests.harness import WorkerProcess, wait_until
from tests.worker_app import charge

#: A value only the task's arguments hold, to show they stay out of decision lines.
AMOUNT = 987_654_321


def _json_lines(log: str) -> list[dict[str, Any]]:
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_a_deduplicated_task_logs_a_json_line_with_its_id_key_and_decision(
    workers: Callable[..., WorkerProcess], engine: Engine
) -> None:
    worker = workers("json1", {"TEST_EXTRA_SETTINGS": json.dumps({"reliable_log_json": True})}, concurrency=2)
    first = charge.delay("json-1", AMOUNT)
    first.get(timeout=20)
    dup = charge.delay("json-1", AMOUNT)
    dup.get(timeout=20)
    assert effects(engine) == {"json-1": 1}

    def decisions() -> list[dict[str, Any]]:
        return [o for o in _json_lines(worker.log()) if "reliable" in o]

    key = f"{charge.name}||charge:json-1"
    wait_until(lambda: any(o["reliable"]["decision"] == "deduplicated" for o in decisions()), 10, what="the line")
    lines = decisions()
    deduplicated = next(o for o in lines if o["reliable"]["decision"] == "deduplicated")
    assert deduplicated["task_id"] == dup.id and deduplicated["idempotency_key"] == key
    assert deduplicated["reliable"] == {
        "decision": "deduplicated",
        "event": "task-deduplicated",
        "task": charge.name,
        "task_id": dup.id,
        "idempotency_key": key,
        "key": key,
        "original_task_id": first.id,
    }
    assert deduplicated["level"] == "INFO" and deduplicated["process"].startswith("ForkPoolWorker")
    # the first delivery claimed and completed the key, each logged once
    done = [(o["reliable"]["decision"], o["task_id"]) for o in lines if o["reliable"]["decision"] != "deduplicated"]
    assert done == [("claimed", first.id), ("completed", first.id)]
    assert not any(str(AMOUNT) in json.dumps(o["reliable"]) for o in lines)
    # Celery's own lines are JSON too, with the task id, and without the task's arguments
    everything = _json_lines(worker.log())
    assert any(o["message"].endswith(" ready.") for o in everything)
    succeeded = [o for o in everything if o["message"].startswith(f"Task {charge.name}[{dup.id}] succeeded")]
    assert len(succeeded) == 1 and succeeded[0]["task_id"] == dup.id
    assert "args" not in succeeded[0]["data"] and "kwargs" not in succeeded[0]["data"]
