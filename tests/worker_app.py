"""The Celery app the integration and fault tests run in real worker processes.

Everything comes from environment variables so each test can point workers at its own
Redis databases, queue, database and lease lengths.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, signals
from sqlalchemy import text

import celery_reliable
from celery_reliable import ReliableTask, RetryPolicy

env = os.environ.get

app = Celery(
    "reliable_tests",
    broker=env("TEST_BROKER_URL", "redis://127.0.0.1:6379/10"),
    backend=env("TEST_BACKEND_URL", "redis://127.0.0.1:6379/11"),
)
app.conf.update(
    reliable_redis_url=env("TEST_RELIABLE_REDIS", "redis://127.0.0.1:6379/12"),
    reliable_database_url=env("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test"),
    reliable_claim_lease=float(env("TEST_CLAIM_LEASE", "3")),
    reliable_busy_delay=float(env("TEST_BUSY_DELAY", "0.3")),
    reliable_defer_jitter=0.2,
    reliable_pump_interval=0.1,
    reliable_send_events=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=env("TEST_QUEUE", "reliable-tests"),
    broker_transport_options={
        "visibility_timeout": float(env("TEST_VISIBILITY_TIMEOUT", "3600")),
        # sweep unacknowledged messages every second (kombu's default is ~100 s)
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)
# Redlock nodes: a test starts private redis-servers and passes their URLs; by default
# the URLs name ports nothing listens on (only the redlock tasks would notice).
app.conf.reliable_redlock_urls = json.loads(
    env("TEST_REDLOCK_URLS", '["redis://127.0.0.1:9/0", "redis://127.0.0.1:9/1", "redis://127.0.0.1:9/2"]')
)
if env("TEST_BROKER_TRANSPORT"):  # e.g. celery_reliable.redis_transport:Transport
    app.conf.broker_transport = env("TEST_BROKER_TRANSPORT")
# Bulkhead tiers and breakers of the tasks below (small, so tests fill them quickly).
app.conf.reliable_bulkheads = {"narrow": 2, "three": 3, "critical": 20, "standard": 20, "optional": 1}
app.conf.reliable_bulkhead_lease = float(env("TEST_BULKHEAD_LEASE", "30"))
app.conf.reliable_queue_depth_cache = 0
app.conf.reliable_circuit_breakers = {
    "ledger-dep": {"failure_threshold": 3, "recovery_timeout": 1.5},
    "ledger-dep-retry": {"failure_threshold": 3, "recovery_timeout": 1.5},
}
# A test may inject settings (JSON) to check how workers treat bad configuration.
app.conf.update(json.loads(env("TEST_EXTRA_SETTINGS", "{}")))
celery_reliable.install(app)

#: Ledger Redis: counts what happened, never deduplicates, never flushed by fault tests.
LEDGER_URL = env("TEST_LEDGER_REDIS", "redis://127.0.0.1:6379/13")
_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _ledger
    if _ledger is None or _ledger.connection_pool.pid != os.getpid():
        _ledger = redis.Redis.from_url(LEDGER_URL)
    return _ledger


@signals.task_prerun.connect
def _count_delivery(task_id: str | None = None, task: object = None, **_: object) -> None:
    ledger().rpush("deliveries", f"{getattr(task, 'name', '?')}:{task_id}")


@app.task(base=ReliableTask, bind=True, idempotency_key="charge:{order_id}")
def charge(self: ReliableTask, order_id: str, amount: int, hold: float = 0.0) -> dict[str, object]:
    """Write one row to the effects ledger (no unique constraint) in the task's transaction."""
    with self.transaction() as session:
        session.execute(
            text("INSERT INTO effects_ledger (key, task_id, pid, amount) VALUES (:k, :t, :p, :a)"),
            {"k": order_id.replace("\x00", "\\x00"), "t": self.request.id, "p": os.getpid(), "a": amount},
        )
        if hold:
            time.sleep(hold)
    return {"order_id": order_id, "charged": amount}


@app.task(base=ReliableTask, bind=True, idempotency_key="slow:{job_id}")
def slow_job(self: ReliableTask, job_id: str, seconds: float) -> str:
    """Count concurrent bodies per key in the ledger while sleeping."""
    led = ledger()
    now_running = led.incr(f"running:{job_id}")
    led.rpush(f"max_running:{job_id}", now_running)
    led.rpush("bodies", job_id)
    try:
        time.sleep(seconds)
    finally:
        led.decr(f"running:{job_id}")
    return job_id


@app.task(base=ReliableTask, bind=True, idempotency_key="ext:{n}")
def external_effect(self: ReliableTask, n: int) -> int:
    """An effect outside the database: a ledger push, once per run of the body."""
    ledger().rpush("external", f"{n}:{self.request.idempotency_key}")
    return n * 2


@app.task(base=ReliableTask)
def add(x: int, y: int) -> int:
    """No options: must behave exactly like a Celery task."""
    return x + y


@app.task(base=ReliableTask)
def tsum(values: list[int]) -> int:
    """Chord body for canvas tests."""
    return sum(values)


@app.task(base=ReliableTask, bind=True)
def later(self: ReliableTask, tag: str) -> str:
    """Records when it ran, for countdown parking tests."""
    ledger().rpush("later", f"{tag}:{time.time()}:{self.request.retries}")
    return tag


@app.task(base=ReliableTask, bind=True, idempotency_key="flaky:{tag}", max_retries=3)
def flaky(self: ReliableTask, tag: str) -> str:
    """Fails its first attempt and retries through Celery's own ``self.retry``."""
    ledger().rpush(f"flaky:{tag}", self.request.retries)
    if self.request.retries == 0:
        raise self.retry(countdown=1.5)
    return f"{tag}:{self.request.retries}"


@app.task(base=ReliableTask, bind=True, idempotency_key=True)
def returns_set(self: ReliableTask, n: int) -> object:
    """Returns a value JSON cannot hold."""
    ledger().rpush("returns_set", n)
    return {n}


@app.task(base=ReliableTask, bind=True, idempotency_key="receipt:{order_id}", idempotency_on_publish=True)
def send_receipt(self: ReliableTask, order_id: str) -> str:
    """Deduplicated at publish time as well as at execution."""
    ledger().rpush("receipts", order_id)
    return f"sent:{order_id}"


@app.task(base=ReliableTask, bind=True, idempotency_key="cf:{order_id}", max_retries=3)
def charge_then_fail(self: ReliableTask, order_id: str) -> str:
    """Writes its effect, then fails the first attempt after the block: the effect must roll back."""
    ledger().rpush(f"cf_bodies:{order_id}", self.request.retries)
    with self.transaction() as session:
        session.execute(
            text("INSERT INTO effects_ledger (key, task_id, pid, amount) VALUES (:k, :t, :p, 0)"),
            {"k": order_id, "t": self.request.id, "p": os.getpid()},
        )
    if self.request.retries == 0:
        raise self.retry(countdown=0.2)
    return order_id


@app.task(base=ReliableTask, bind=True, idempotency_key="coe:{order_id}")
def charge_commit_on_exit(self: ReliableTask, order_id: str, amount: int) -> dict[str, object]:
    """Commits at the end of the block (for code after it that needs the data committed)."""
    with self.transaction(commit_on_exit=True) as session:
        session.execute(
            text("INSERT INTO effects_ledger (key, task_id, pid, amount) VALUES (:k, :t, :p, :a)"),
            {"k": order_id, "t": self.request.id, "p": os.getpid(), "a": amount},
        )
    return {"order_id": order_id, "charged": amount}


LOCK_TTL = float(env("TEST_LOCK_TTL", "2"))


def _section(self: ReliableTask, tag: str, hold: float) -> dict[str, object]:
    """Record one critical section in the ledger: who ran, with which token, from when to when."""
    start = time.time()
    ledger().rpush(f"enter:{tag}", f"{self.request.id}:{os.getpid()}:{self.request.fencing_token}")
    if ledger().set(f"held:{self.request.id}", 1, nx=True):  # a redelivery does not hold again
        time.sleep(hold)
    end = time.time()
    entry = {"task_id": self.request.id, "pid": os.getpid(), "token": self.request.fencing_token, "start": start}
    entry["end"] = end
    ledger().rpush(f"sections:{tag}", json.dumps(entry))
    return {"token": self.request.fencing_token, "lock": self.request.lock_name}


@app.task(base=ReliableTask, bind=True, singleton=True, lock_ttl=LOCK_TTL)
def exclusive(self: ReliableTask, n: int, hold: float = 0.2) -> dict[str, object]:
    """One body at a time across the cluster, whatever the arguments."""
    return _section(self, "exclusive", hold)


@app.task(base=ReliableTask, bind=True, lock_key="report:{day}", lock_ttl=LOCK_TTL, on_locked="skip")
def report_skip(self: ReliableTask, day: str, hold: float = 0.5) -> dict[str, object]:
    """One report per day at a time; a second one while it runs is skipped."""
    return _section(self, f"report:{day}", hold)


@app.task(base=ReliableTask, bind=True, lock_key="report:{day}", lock_ttl=LOCK_TTL, on_locked="fail")
def report_fail(self: ReliableTask, day: str, hold: float = 0.5) -> dict[str, object]:
    """Same lock as report_skip; fails when it is busy."""
    return _section(self, f"report:{day}", hold)


@app.task(base=ReliableTask, bind=True, singleton=True, lock_backend="postgres")
def pg_exclusive(self: ReliableTask, n: int, hold: float = 0.2) -> dict[str, object]:
    """A singleton on a PostgreSQL advisory lock."""
    return _section(self, "pg_exclusive", hold)


@app.task(base=ReliableTask, bind=True, lock_key="acct:{acct}", lock_ttl=LOCK_TTL, max_retries=2)
def locked_retry(self: ReliableTask, acct: str) -> str:
    """Retries once; the lock must be free while the retry waits."""
    ledger().rpush(f"attempts:{acct}", f"{self.request.retries}:{self.request.fencing_token}")
    if self.request.retries == 0:
        raise self.retry(countdown=0.5)
    return "done"


@app.task(base=ReliableTask, bind=True, singleton=True, lock_backend="redlock", lock_ttl=LOCK_TTL)
def redlock_exclusive(self: ReliableTask, n: int, hold: float = 0.2) -> dict[str, object]:
    """A singleton on a Redlock over the nodes of TEST_REDLOCK_URLS."""
    return _section(self, "redlock_exclusive", hold)


# -- retries and dead letters ----------------------------------------------------------

FAST = RetryPolicy(max_attempts=5, base=0.05, cap=0.4)


def _attempt(self: ReliableTask, tag: str) -> None:
    ledger().rpush(f"attempts:{tag}", json.dumps({"retries": self.request.retries, "at": time.time()}))


@app.task(base=ReliableTask, bind=True, retry_policy=FAST)
def dependency_down(self: ReliableTask, n: int) -> None:
    """Fails with a retryable error every time."""
    _attempt(self, f"down:{n}")
    raise ConnectionError(f"dependency down (call {n})")


@app.task(base=ReliableTask, bind=True, retry_policy=RetryPolicy(max_attempts=4, base=0.3, cap=1.0, jitter="none"))
def backoff_schedule(self: ReliableTask, tag: str) -> None:
    """Fails every time with an exact (unjittered) schedule: 0.3 s, 0.6 s, 1.0 s."""
    _attempt(self, f"schedule:{tag}")
    raise TimeoutError("still down")


class ApiError(Exception):
    """An HTTP error as client libraries raise them (a ``status_code`` attribute)."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(status_code)


@app.task(base=ReliableTask, bind=True, retry_policy=True)
def unauthorized(self: ReliableTask, n: int) -> None:
    """Fails with an error that retrying cannot fix (HTTP 401)."""
    _attempt(self, f"401:{n}")
    raise ApiError(401)


@app.task(base=ReliableTask, bind=True, retry_policy=FAST)
def fixed_later(self: ReliableTask, n: int) -> str:
    """Fails while the ledger key ``broken`` exists, then succeeds."""
    _attempt(self, f"fixable:{n}")
    if ledger().exists("broken"):
        raise ConnectionError("still broken")
    return f"fixed {n}"


@app.task(base=ReliableTask, bind=True)
def kills_its_worker(self: ReliableTask, n: int) -> None:
    """SIGKILLs its own worker process on every delivery."""
    _attempt(self, f"poison:{n}")
    os.kill(os.getpid(), 9)


@app.task(base=ReliableTask, bind=True, retry_policy=FAST, retry_budget="flaky-dependency")
def budgeted_call(self: ReliableTask, n: int) -> None:
    """Calls a dependency that always fails, under a shared retry budget."""
    _attempt(self, "budgeted")
    raise ConnectionError("dependency down")


def _mark_start(self: ReliableTask, ledger_list: str, **extra: object) -> None:
    """Append this body's start (ledger server time, µs) and its rate-limit slot to ``ledger_list``."""
    seconds, micros = ledger().time()
    slot = getattr(self.request, "rate_limit_slot", None) or {}
    row = {"task_id": self.request.id, "retries": self.request.retries, "start_us": seconds * 1_000_000 + micros}
    row.update(slot_us=slot.get("at_us"), pid=os.getpid(), **extra)
    ledger().rpush(ledger_list, json.dumps(row))


@app.task(base=ReliableTask, bind=True, global_rate_limit=env("TEST_RATE_LIMIT", "20/s"))
def limited(self: ReliableTask, i: int) -> int:
    """Runs at most ``TEST_RATE_LIMIT`` (20/s) cluster-wide; records when it started."""
    _mark_start(self, "limited", i=i)
    return i


@app.task(base=ReliableTask, bind=True)
def unlimited(self: ReliableTask, i: int) -> int:
    """No limit: shares the queue and the workers with ``limited``."""
    _mark_start(self, "unlimited", i=i)
    return i


@app.task(base=ReliableTask, bind=True, global_rate_limit="5/s", rate_limit_key="tenant:{tenant}")
def tenant_call(self: ReliableTask, tenant: str, i: int) -> int:
    """5/s per tenant."""
    _mark_start(self, f"tenant:{tenant}", i=i)
    return i


@app.task(base=ReliableTask, bind=True, global_rate_limit="10/s", rate_limit_on_publish=True)
def shaped(self: ReliableTask, i: int) -> int:
    """10/s, shaped at publish time: parked by apply_async until its slot."""
    _mark_start(self, "shaped", i=i)
    return i


@app.task(
    base=ReliableTask,
    bind=True,
    idempotency_key="paid:{order_id}",
    global_rate_limit="2/s",
    rate_limit_key="payments",
)
def limited_payment(self: ReliableTask, order_id: str) -> str:
    """Keyed and rate-limited: a duplicate of a completed key takes no slot."""
    _mark_start(self, "payments", order_id=order_id)
    return f"paid {order_id}"


@app.task(base=ReliableTask, bind=True, bulkhead="narrow")
def narrow(self: ReliableTask, i: int, hold: float = 0.3) -> int:
    """At most 2 bodies at once cluster-wide; records how many ran together."""
    now = ledger().incr("narrow:running")
    ledger().rpush("narrow:seen", now)
    try:
        time.sleep(hold)
    finally:
        ledger().decr("narrow:running")
    _mark_start(self, "narrow", i=i)
    return i


@app.task(base=ReliableTask, bind=True, bulkhead="narrow", bulkhead_on_full="reject")
def narrow_or_reject(self: ReliableTask, i: int, hold: float = 1.0) -> int:
    """Dead-lettered when both slots of the narrow tier are taken."""
    _mark_start(self, "narrow-reject", i=i)
    time.sleep(hold)
    return i


@app.task(base=ReliableTask, bind=True, max_queue_depth=5)
def shed(self: ReliableTask, i: int) -> int:
    """Refused at apply_async when the queue it is sent to holds 5 messages."""
    return i


@app.task(base=ReliableTask, bind=True, circuit_breaker="ledger-dep", retry_policy=FAST)
def call_dependency(self: ReliableTask, i: int) -> int:
    """Calls a dependency (the ledger list ``dep:calls``) that fails while ``dep:down`` exists."""
    down = ledger().exists("dep:down")
    ledger().rpush("dep:calls", json.dumps({"i": i, "down": bool(down), "retries": self.request.retries}))
    if down:
        raise ConnectionError("dependency down")
    _mark_start(self, "dep:ok", i=i)
    return i


@app.task(
    base=ReliableTask,
    bind=True,
    circuit_breaker="rates",
    circuit_breaker_fallback="last_result",
)
def exchange_rate(self: ReliableTask, currency: str) -> dict[str, object]:
    """Answers the last good rate while the ``rates`` breaker is open."""
    if ledger().exists("rates:down"):
        raise ConnectionError("rates service down")
    return {"currency": currency, "rate": float(ledger().incr(f"rates:{currency}"))}


@app.task(base=ReliableTask, bind=True, circuit_breaker="ledger-dep-retry", max_retries=None)
def retrying_dependency(self: ReliableTask, i: int) -> int:
    """Celery's own retry pattern inside a breaker: ``self.retry(exc=...)`` every 50 ms."""
    if ledger().exists("dep:down"):
        ledger().rpush("dep:retry-calls", i)
        try:
            raise ConnectionError("dependency down")
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=0.05) from exc
    return i


def _interval(self: ReliableTask, ledger_list: str, started_us: int, **extra: object) -> None:
    seconds, micros = ledger().time()
    row = {"task_id": self.request.id, "start_us": started_us, "end_us": seconds * 1_000_000 + micros}
    row.update(pid=os.getpid(), retries=self.request.retries, **extra)
    ledger().rpush(ledger_list, json.dumps(row))


def _now_us() -> int:
    seconds, micros = ledger().time()
    return int(seconds) * 1_000_000 + int(micros)


@app.task(base=ReliableTask, bind=True, bulkhead="three")
def three(self: ReliableTask, i: int, hold: float = 0.02) -> int:
    """The 'three' tier: records the interval its body ran in (ledger clock)."""
    started = _now_us()
    ledger().rpush("three:started", json.dumps({"i": i, "pid": os.getpid(), "at_us": started}))
    time.sleep(hold)
    _interval(self, "three", started, i=i)
    return i


@app.task(base=ReliableTask, bind=True, bulkhead="optional")
def optional_work(self: ReliableTask, i: int, hold: float = 0.2) -> int:
    """The optional tier (one at a time): a flood of these must not hold up critical tasks."""
    time.sleep(hold)
    ledger().rpush("optional", i)
    return i


@app.task(base=ReliableTask, bind=True, bulkhead="critical")
def critical_work(self: ReliableTask, i: int, sent_us: int) -> int:
    """The critical tier: records how long after it was sent its body started."""
    ledger().rpush("critical", json.dumps({"i": i, "latency_us": _now_us() - sent_us}))
    return i
