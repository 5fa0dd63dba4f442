"""Dead letters through the Python API: a task fails for good, you look at it, fix, replay.

Needs a Redis on localhost (or ``DLQ_REDIS_URL``). From the repository root::

    python -m examples.dead_letters

An embedded worker runs ``sync_invoice``, which calls a partner API that is down: each of
three invoices is tried 3 times (a ``RetryPolicy`` with jittered backoff, the retries
parked in Redis) and then lands in the dead-letter store with its arguments, error and
attempt history. The example lists and counts the letters, shows one, "fixes" the
partner, and replays the letters: each is published again with a new task id and runs.
Replaying them a second time publishes nothing (each letter is replayed once unless
``again=True``). The shell does the same with ``celery -A proj reliable dlq
ls|show|replay|count``.

Environment: ``DLQ_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``: broker, results and
the reliable store, under keys of this run only, deleted at the end) and
``DLQ_DATABASE_URL`` (default SQLite in a temporary directory; or
``postgresql+psycopg://user@host/db``).
"""

from __future__ import annotations

import os
import tempfile
import uuid

import redis
from celery import Celery
from sqlalchemy import create_engine

import celery_reliable
from celery_reliable import DeadLetterStore, ReliableTask, RetryPolicy
from celery_reliable.migrate import upgrade

env = os.environ.get
RUN = uuid.uuid4().hex[:8]
REDIS_URL = env("DLQ_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = env("DLQ_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp(prefix='dlq-example-')}/billing.db"
QUEUE = f"example-dlq-{RUN}"

app = Celery("billing", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_database_url=DATABASE_URL,
    reliable_key_prefix=f"example-dlq-{RUN}",  # this run's keys only
    reliable_pump_interval=0.05,  # bring parked retries back quickly (the example is short)
    reliable_defer_jitter=0.0,
    task_default_queue=QUEUE,
    result_expires=600,
)
celery_reliable.install(app)

#: The partner API's state; the fix flips it.
partner = {"up": False}


@app.task(
    base=ReliableTask,
    bind=True,
    name="billing.sync_invoice",
    retry_policy=RetryPolicy(max_attempts=3, base=0.05, cap=0.2, retry_on=(ConnectionError,)),
)
def sync_invoice(self: ReliableTask, invoice_id: str) -> str:
    """Send an invoice to the partner; retried on ConnectionError, dead-lettered after 3 attempts."""
    if not partner["up"]:
        raise ConnectionError(f"partner API refused the connection (attempt {self.request.retries + 1})")
    return f"{invoice_id} synced"


def main() -> int:
    """Fail three invoices into the store, inspect them, replay them; 0 if all ran after the replay."""
    from celery.contrib.testing.worker import start_worker

    engine = create_engine(DATABASE_URL)
    upgrade(engine)  # `celery -A proj reliable migrate` does the same
    store = DeadLetterStore(engine)
    invoices = [f"inv-{RUN}-{n}" for n in range(1, 4)]
    try:
        with start_worker(app, pool="threads", concurrency=3, perform_ping_check=False, loglevel="CRITICAL"):
            failed = [sync_invoice.delay(i) for i in invoices]
            for result in failed:
                result.get(timeout=30, propagate=False)
            mine = {r.id for r in failed}
            print(f"{len(failed)} invoices submitted, partner down: {[r.state for r in failed]}")

            letters = [letter for letter in store.list(task=sync_invoice.name, limit=1000) if letter.task_id in mine]
            print(f"dead letters: {len(letters)} of this run; by reason {store.count()}")
            for letter in letters:
                print(
                    f"  #{letter.id} {letter.task_name}{tuple(letter.args)} {letter.reason}, {letter.attempts} attempts"
                )
            first = store.get(letters[0].id or 0)
            print(f"letter #{first.id}: {first.exception_type}: {first.exception_message}")
            for attempt in first.history:
                print(
                    f"  attempt {attempt.get('attempt')}: {attempt.get('exception_type')} {attempt.get('message', '')}"
                )

            partner["up"] = True  # the fix is deployed
            replays = [r for letter in letters for r in store.replay(app, id=letter.id)]
            print("replay:", ", ".join(f"#{r.letter_id} {r.status} as {r.task_id}" for r in replays))
            answers = [app.AsyncResult(r.task_id).get(timeout=30) for r in replays if r.task_id]
            print("replayed tasks returned:", answers)
            again = [r for letter in letters for r in store.replay(app, id=letter.id)]
            print("second replay:", ", ".join(f"#{r.letter_id} {r.status}" for r in again))
    finally:
        engine.dispose()
        _forget_run()
    ok = len(letters) == 3 and sorted(answers) == sorted(f"{i} synced" for i in invoices)
    return 0 if ok and all(r.status == "already_replayed" for r in again) else 1


def _forget_run() -> None:
    """Delete this run's Redis keys (never anything else)."""
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"example-dlq-{RUN}*", f"_kombu.binding.{QUEUE}*"):
        for key in client.scan_iter(match=pattern, count=500):
            client.delete(key)
    client.close()


if __name__ == "__main__":
    raise SystemExit(main())
