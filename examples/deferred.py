"""The parking lot: "not now" waits in Redis, not in a worker and not as an ETA message.

Needs a Redis on localhost (or ``DEFERRED_REDIS_URL``). From the repository root::

    python -m examples.deferred

An embedded worker (2 threads) shows the deferred set at work:

1. ``countdown=3`` (above ``reliable_defer_threshold``, 1 s) is parked in a Redis sorted
   set, not published: the broker queue stays empty while it waits, and the pump
   publishes it when due, with the same task id;
2. a ``self.retry(countdown=1)`` is parked the same way, with the same task id and
   ``retries + 1``;
3. two deliveries of one idempotency key at once: the second finds the key in progress,
   is parked (reason ``key-in-progress``) instead of holding a thread, and comes back to
   the stored result;
4. ``countdown=0.5`` (under the threshold) is left to Celery as usual.

What is parked, and why, is what ``celery -A proj reliable status`` shows on its
``deferred`` line (``celery_reliable.status.parking.deferred`` here).

Environment: ``DEFERRED_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``: broker,
results and the reliable store, under keys of this run only, deleted at the end).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import redis
from celery import Celery

import celery_reliable
from celery_reliable import ReliableTask
from celery_reliable.status.parking import deferred

env = os.environ.get
RUN = uuid.uuid4().hex[:8]
REDIS_URL = env("DEFERRED_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"example-deferred-{RUN}"
QUEUE = f"example-deferred-{RUN}"

app = Celery("reminders", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_key_prefix=PREFIX,  # this run's keys only
    reliable_defer_jitter=0.05,
    task_default_queue=QUEUE,
    result_expires=600,
)
celery_reliable.install(app)

#: (task, task id, retries, seconds since start) of every body that ran.
bodies: list[tuple[str, str, int, float]] = []
_lock = threading.Lock()
_start = time.monotonic()


def _ran(task: ReliableTask) -> None:
    with _lock:
        bodies.append((task.name, str(task.request.id), int(task.request.retries or 0), time.monotonic() - _start))


@app.task(base=ReliableTask, bind=True, name="reminders.send")
def send_reminder(self: ReliableTask, user: str) -> str:
    """A reminder sent later with a countdown."""
    _ran(self)
    return f"reminded {user}"


@app.task(base=ReliableTask, bind=True, name="reminders.flaky", max_retries=3)
def flaky_sync(self: ReliableTask, user: str) -> str:
    """Fails its first attempt and asks Celery to retry in 1 s."""
    _ran(self)
    if not self.request.retries:
        raise self.retry(countdown=1)
    return f"synced {user} on retry {self.request.retries}"


@app.task(base=ReliableTask, bind=True, name="reminders.export", idempotency_key="export:{job}")
def export(self: ReliableTask, job: str) -> str:
    """A slow keyed job: a second delivery of the key while it runs waits parked."""
    _ran(self)
    time.sleep(1.5)
    return f"exported {job}"


def _parked(client: redis.Redis, what: str) -> None:
    state = deferred(client, PREFIX)
    print(f"  {what}: parked {state['due']} {state['reasons']}, broker queue holds {client.llen(QUEUE)}")


def _runs(name: str) -> list[tuple[str, int, float]]:
    return [(task_id, retries, at) for task, task_id, retries, at in bodies if task == name]


def main() -> int:
    """Run the four cases; 0 if each waited where it should and ran with its own task id."""
    from celery.contrib.testing.worker import start_worker

    client = redis.Redis.from_url(REDIS_URL)
    checks: list[bool] = []
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"):
            print("1. countdown=3")
            sent_at = time.monotonic() - _start
            later = send_reminder.apply_async(("alice",), countdown=3)
            _parked(client, "right after apply_async")
            print(f"  {later.get(timeout=30)!r} after {_runs(send_reminder.name)[0][2] - sent_at:.1f} s")
            checks.append(_runs(send_reminder.name)[0][0] == later.id)

            print("2. self.retry(countdown=1)")
            retried = flaky_sync.delay("bob")
            time.sleep(0.5)
            _parked(client, "after the first attempt")
            answer = retried.get(timeout=30)
            runs = ", ".join(f"{i[:8]}… retries={r} at {at:.1f} s" for i, r, at in _runs(flaky_sync.name))
            print(f"  {answer!r}; bodies: {runs}")
            checks.append([(i, r) for i, r, _ in _runs(flaky_sync.name)] == [(retried.id, 0), (retried.id, 1)])

            print("3. the same key delivered twice at once")
            first, second = export.delay("q3"), export.delay("q3")
            time.sleep(0.4)
            _parked(client, "while the first runs")
            answers = [first.get(timeout=30), second.get(timeout=30)]
            print(f"  answers {answers}; the body ran {len(_runs(export.name))} time(s)")
            checks.append(answers == ["exported q3"] * 2 and len(_runs(export.name)) == 1)

            print("4. countdown=0.5")
            soon = send_reminder.apply_async(("carol",), countdown=0.5)
            _parked(client, "right after apply_async")
            print(f"  {soon.get(timeout=30)!r} (an ETA message, as in plain Celery)")
            checks.append(deferred(client, PREFIX)["due"] == 0)
    finally:
        for pattern in (f"{PREFIX}*", f"_kombu.binding.{QUEUE}*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
        client.close()
    return 0 if all(checks) and len(checks) == 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
