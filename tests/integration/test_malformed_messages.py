"""Messages a worker cannot run are dead-lettered with their raw body; the worker keeps serving."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import REDIS, TEST_DBS
from tests.harness import wait_until
from tests.worker_app import add, app

broker = redis.Redis.from_url(f"{REDIS}/{TEST_DBS['broker']}")


def envelope(body: bytes, headers: dict[str, object]) -> str:
    """A kombu Redis-transport message as a misbehaving producer could push it."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "reliable-tests"},
                "delivery_mode": 2,
                "delivery_tag": str(uuid.uuid4()),
                "priority": 0,
            },
        }
    )


def letters(engine: Engine) -> list[tuple[str, str | None, str | None, str | None, str | None]]:
    with engine.connect() as conn:
        sql = "SELECT reason, task_id, task_name, raw_body, raw_body_encoding FROM reliable_dead_letters ORDER BY id"
        rows = conn.execute(text(sql)).all()
    return [tuple(r) for r in rows]


def test_garbage_and_unknown_tasks_are_dead_lettered_and_the_worker_lives(workers, engine: Engine) -> None:
    w = workers("w1", {}, concurrency=1)
    unknown = app.send_task("billing.no_such_task", args=(1,))
    broker.lpush("reliable-tests", envelope(b"{not json at all", {"task": add.name, "id": "garbage-1", "lang": "py"}))
    broker.lpush("reliable-tests", envelope(b"\xff\xfe binary", {"lang": "py"}))  # not even a task message
    wait_until(lambda: len(letters(engine)) == 3, 30, what="three dead letters")
    assert add.delay(2, 3).get(timeout=30) == 5  # still serving
    by_reason = {(r, t): (name, body, enc) for r, t, name, body, enc in letters(engine)}
    assert by_reason[("unknown_task", unknown.id)][0] == "billing.no_such_task"
    assert by_reason[("undeserializable", "garbage-1")] == (add.name, "{not json at all", "utf-8")
    [(name, body, enc)] = [v for (r, t), v in by_reason.items() if t is None]
    assert name is None and base64.b64decode(body or "") == b"\xff\xfe binary" and enc == "base64"
    assert broker.llen("reliable-tests") == 0
    assert w.proc.poll() is None
    # the same garbage again is the same letter (deduplicated on its body), still nothing lost
    broker.lpush("reliable-tests", envelope(b"\xff\xfe binary", {"lang": "py"}))
    wait_until(lambda: broker.llen("reliable-tests") == 0, 30, what="the duplicate to be consumed")
    assert add.delay(1, 1).get(timeout=30) == 2
    assert len(letters(engine)) == 3
