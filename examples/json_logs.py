"""Structured logs: every decision as one JSON line with the task id and idempotency key.

Needs a Redis on localhost (or ``JSONLOGS_REDIS_URL``). From the repository root::

    python -m examples.json_logs

With ``app.conf.reliable_log_json = True`` the worker's log lines (Celery's and ours) are
JSON objects, one per line (``celery_reliable.logs.JsonFormatter``). An embedded worker
runs a keyed ``charge`` twice for one order (claimed, completed, then deduplicated) and a
singleton ``rebuild_index`` twice at once (the second is skipped while the first holds the
lock); the example prints the decision lines its worker wrote and checks that each one
names the task id, the key and the decision. Arguments never appear in them: note that
the card number below is nowhere in the log.

Environment: ``JSONLOGS_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``: broker, results
and the reliable store, under keys of this run only, deleted at the end).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import celery_reliable
from celery_reliable import ReliableTask

env = os.environ.get
RUN = uuid.uuid4().hex[:8]
REDIS_URL = env("JSONLOGS_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"example-logs-{RUN}"
QUEUE = f"example-logs-{RUN}"
CARD = "4242-4242-4242-4242"

app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_key_prefix=PREFIX,  # this run's keys only
    reliable_log_json=True,  # the switch: JSON lines from the worker (and beat)
    task_default_queue=QUEUE,
    result_expires=600,
)
celery_reliable.install(app)


@app.task(base=ReliableTask, bind=True, name="shop.charge", idempotency_key="charge:{order_id}")
def charge(self: ReliableTask, order_id: str, card_number: str, amount: int) -> dict[str, Any]:
    """Charge an order once; the card number is an argument, never logged."""
    return {"order_id": order_id, "charged": amount}


@app.task(base=ReliableTask, bind=True, name="shop.rebuild_index", singleton=True, on_locked="skip")
def rebuild_index(self: ReliableTask) -> str:
    """One rebuild at a time; a second one while it runs is skipped."""
    time.sleep(1.0)
    return "rebuilt"


def main() -> int:
    """Run the tasks, print the worker's decision lines; 0 if each carries id, key and decision."""
    from celery.contrib.testing.worker import start_worker

    logfile = Path(tempfile.mkdtemp(prefix="json-logs-example-")) / "worker.log"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="INFO", logfile=str(logfile)
        ):
            first = charge.delay(f"order-{RUN}", CARD, 4200)
            first.get(timeout=30)
            dup = charge.delay(f"order-{RUN}", CARD, 4200)
            dup.get(timeout=30)
            runs = [rebuild_index.delay() for _ in range(2)]
            answers = [r.get(timeout=30) for r in runs]
            time.sleep(0.2)  # let the last lines reach the file
    finally:
        for pattern in (f"{PREFIX}*", f"_kombu.binding.{QUEUE}*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
        client.close()

    lines = [json.loads(line) for line in logfile.read_text().splitlines() if line.startswith("{")]
    decisions = [line for line in lines if "reliable" in line]
    print(f"the worker wrote {len(lines)} JSON lines to {logfile}; its decisions:")
    for line in decisions:
        print(json.dumps(line))
    print()
    print(f"{'decision':<14} {'task':<20} {'task id':<10} idempotency key")
    for line in decisions:
        fields = line["reliable"]
        key = fields.get("idempotency_key", "-")
        print(f"{fields['decision']:<14} {fields['task']:<20} {fields['task_id'][:8]:<10} {key}")

    seen = [(d["reliable"]["decision"], d["task_id"]) for d in decisions]
    ok = ("deduplicated", dup.id) in seen and ("claimed", first.id) in seen and ("completed", first.id) in seen
    ok = ok and answers.count("rebuilt") == 1 and None in answers and any(d == "lock-skipped" for d, _ in seen)
    ok = ok and CARD not in logfile.read_text()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
