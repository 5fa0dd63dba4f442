"""A task's admission in one Redis round trip, against a real Redis (db 0, a prefix of its own).

The task runs in this process through ``ReliableTask.__call__`` with a pushed request,
as a worker runs it, so every round trip the guards make is counted exactly, client
side (one ``send_packed_command`` per request on the wire), and only in this thread.
Real workers run the same path in the guards' own suites.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Ignore, Retry
from redis.connection import AbstractConnection

from celery_reliable import ReliableTask, lock_guard
from celery_reliable import admission as admission_module
from celery_reliable.admission import ORDER, STOPS, composite_source
from celery_reliable.bulkhead import Bulkhead
from celery_reliable.rate_guard import SLOT_HEADER
from celery_reliable.scripts import script_source

URL = "redis://127.0.0.1:6379/0"

_counting = threading.local()


@pytest.fixture(scope="module", autouse=True)
def count_round_trips() -> Iterator[None]:
    """Count this thread's requests to Redis while ``_counting.counts`` is set."""
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> Any:
        counts = getattr(_counting, "counts", None)
        if counts is not None:
            counts["round_trips"] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    yield
    AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


@pytest.fixture()
def prefix() -> Iterator[str]:
    value = f"adm-{uuid.uuid4().hex[:10]}"
    yield value
    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture()
def app(prefix: str) -> Celery:
    app = Celery("admission-tests", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        reliable_redis_url=URL,
        reliable_key_prefix=prefix,
        reliable_bulkheads={"critical": 2},
        reliable_circuit_breakers={"partner": {"failure_threshold": 3, "recovery_timeout": 5}},
        task_send_sent_event=False,
        worker_send_task_events=False,
    )
    return app


def _keys(prefix: str, order: str) -> tuple[str, str]:
    """The bulkhead's slots and the lock of ``order`` (the keys the guards take)."""
    return f"{prefix}:bh:{{critical}}", f"{prefix}:lock:{{order:{order}}}"


def _guarded(app: Celery, seen: list[Counter[str]], held: list[tuple[int, int]] | None = None) -> Any:
    @app.task(
        shared=False,
        base=ReliableTask,
        bind=True,
        name="adm.charge",
        idempotency_key="charge:{order}",
        global_rate_limit="1000/s",
        circuit_breaker="partner",
        bulkhead="critical",
        lock_key="order:{order}",
        retry_policy=True,
        retry_budget=True,
    )
    def charge(self: ReliableTask, order: str) -> str:
        seen.append(Counter(_counting.counts))  # round trips before the body: the admission
        if held is not None:  # looked at from outside the count
            counts, _counting.counts = _counting.counts, None
            slots, lock = _keys(app.conf.reliable_key_prefix, order)
            client = redis.Redis.from_url(URL)
            held.append((client.zcard(slots), client.exists(lock)))
            client.close()
            _counting.counts = counts
        return f"charged {order}"

    return charge


def _run(task: Any, *args: Any, headers: dict[str, Any] | None = None, task_id: str | None = None) -> tuple[Any, int]:
    """Run ``task`` as a worker would (not eager); returns its result and the round trips made."""
    _counting.counts = Counter()
    task_id = task_id or uuid.uuid4().hex
    task.push_request(
        id=task_id, args=args, kwargs={}, retries=0, is_eager=False, called_directly=False, headers=headers or {}
    )
    try:
        result = task(*args)
    finally:
        task.pop_request()
        trips = _counting.counts["round_trips"]
        _counting.counts = None
    return result, trips


def test_a_task_with_every_guard_is_admitted_in_one_round_trip(app: Celery, prefix: str) -> None:
    seen: list[Counter[str]] = []
    held: list[tuple[int, int]] = []
    charge = _guarded(app, seen, held)
    _run(charge, "warm-up")  # the first call loads the composite script (SCRIPT LOAD on NOSCRIPT)
    seen.clear()

    result, trips = _run(charge, "o-1")

    assert result == "charged o-1"
    assert held[-1] == (1, 1), "the body ran holding a bulkhead slot and the lock"
    assert seen[0]["round_trips"] == 1, "done lookup, rate meter, breaker, bulkhead, budget, lock and claim: one trip"
    assert trips - seen[0]["round_trips"] == 1, "claim completion, lock, slot and breaker success: one trip"
    # Everything taken was given back: no slot, lock or claim is left behind.
    slots, lock = _keys(prefix, "o-1")
    client = redis.Redis.from_url(URL)
    assert client.zcard(slots) == 0 and not client.exists(lock)
    assert not [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":claim")]
    assert [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":done")], "the key completed"
    client.close()


def test_a_completed_key_answers_in_the_same_round_trip_without_a_rate_slot(app: Celery, prefix: str) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)
    first, _ = _run(charge, "o-2")
    seen.clear()
    meter = redis.Redis.from_url(URL)
    meters = [k for k in meter.scan_iter(match=f"{prefix}:rl:*")]
    before = [meter.get(k) for k in meters]

    again, trips = _run(charge, "o-2")

    assert again == first and seen == []  # replayed, the body did not run
    assert trips == 1  # the done lookup answered in the admission round trip
    assert [meter.get(k) for k in meters] == before  # no rate-limit slot was taken
    meter.close()


def test_a_booking_the_delivery_carries_is_checked_in_the_same_round_trip(app: Celery) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)
    _run(charge, "warm")
    seen.clear()
    client = redis.Redis.from_url(URL)
    seconds, micros = client.time()
    client.close()
    task_id = uuid.uuid4().hex
    booking = {
        "id": task_id,
        "retries": 0,
        "key": "adm.charge",
        "at_us": seconds * 1_000_000 + micros,
        "late_us": 10**6,
    }

    result, _ = _run(charge, "o-3", headers={SLOT_HEADER: booking}, task_id=task_id)

    assert result == "charged o-3"
    assert seen[0]["round_trips"] == 1  # no separate TIME call for the booking's lateness


def test_a_refused_guard_stops_the_admission_before_the_later_guards(app: Celery, prefix: str) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)
    full = Bulkhead("critical", 2, lease=30, client=redis.Redis.from_url(URL), prefix=prefix)
    held = [full.try_acquire().slot for _ in range(2)]
    assert all(held)

    with pytest.raises(Ignore):  # parked until a slot is likely free
        _run(charge, "o-4")

    client = redis.Redis.from_url(URL)
    assert seen == []
    assert not client.exists(_keys(prefix, "o-4")[1]), "the lock was not asked for"
    assert not [k for k in client.scan_iter(match=f"{prefix}*") if b"order:o-4" in k], "nor its fencing token"
    assert not [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":claim")], "nor the claim"
    client.close()


def test_grants_no_guard_took_are_given_back(app: Celery, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)

    def broken_take(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug between two guards")

    monkeypatch.setattr(lock_guard, "take", broken_take)
    with pytest.raises(Retry, match="between two guards"):  # the task's retry policy takes the error
        _run(charge, "o-5")

    client = redis.Redis.from_url(URL)
    slots, lock = _keys(prefix, "o-5")
    assert client.exists(f"{lock}:fence"), "the admission did grant the lock (its fencing token was handed out)"
    assert not client.exists(lock), "and it was released"
    assert not [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":claim")], "the claim too"
    assert client.zcard(slots) == 0
    client.close()


def test_a_failed_admission_script_leaves_each_guard_to_ask_on_its_own(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)

    def failing(self: Any, rt: Any, script: Any, keys: Any, args: Any) -> Any:
        raise redis.exceptions.ResponseError("BUSY Redis is busy running a script")

    monkeypatch.setattr(admission_module.Admission, "_call", failing)
    _run(charge, "warm-up")  # loads each guard's own script
    seen.clear()
    result, _ = _run(charge, "o-6")

    assert result == "charged o-6"
    assert seen[0]["round_trips"] == 7  # done lookup, rate, breaker, bulkhead, budget, lock, claim: one each


def test_the_composite_script_stops_at_the_first_refusal() -> None:
    client = redis.Redis.from_url(URL)
    key = f"adm-lua-{uuid.uuid4().hex[:8]}"
    try:
        # bulkhead of size 1 (its slot taken), then a lock: the lock must not be touched
        client.zadd(f"{key}:slots", {"someone": time.time() * 1000 + 60_000})
        source = composite_source(("bulkhead_acquire", "lock_acquire"), ("bulkhead", "lock"))
        keys = [f"{key}:slots", f"{key}:hold", f"{key}:lock", f"{key}:fence", f"{key}:ceiling", f"{key}:waiters"]
        args = [2, 3, 4, 7, "me", 1, 30_000, "me", 30_000, "0", 60_000, "", "", "0"]
        replies = client.eval(source, len(keys), *keys, *args)
        assert len(replies) == 1 and replies[0][0] == 0  # full: stopped there
        assert not client.exists(f"{key}:lock")

        client.delete(f"{key}:slots")
        replies = client.eval(source, len(keys), *keys, *args)
        assert replies[0][0] == 1 and replies[1] > 0  # slot, then the lock with its fencing token
        assert client.get(f"{key}:lock") == b"me"
    finally:
        client.delete(*[k for k in client.scan_iter(match=f"{key}*")])
        client.close()


def test_every_guard_script_composes_and_loads() -> None:
    scripts = {
        "done": "idem_done",
        "rate": "ratelimit_gcra_book",
        "breaker": "breaker_admit",
        "bulkhead": "bulkhead_acquire",
        "budget": "retry_budget",
        "lock": "lock_acquire",
        "claim": "idem_claim",
    }
    assert tuple(scripts) == ORDER and set(STOPS) == set(ORDER)
    source = composite_source(tuple(scripts.values()), ORDER)
    for name in scripts.values():
        assert script_source(name).strip() in source
    client = redis.Redis.from_url(URL)
    try:
        assert len(client.script_load(source)) == 40
    finally:
        client.close()


def test_the_breaker_success_sent_with_the_completion_is_recorded(app: Celery, prefix: str) -> None:
    from celery_reliable import CircuitBreaker

    @app.task(
        shared=False,
        base=ReliableTask,
        bind=True,
        name="adm.flaky",
        idempotency_key="flaky:{n}",
        circuit_breaker="partner",
        bulkhead="critical",
        lock_key="flaky:{n}",
    )
    def flaky(self: ReliableTask, n: int, fail: bool) -> int:
        if fail:
            raise ConnectionError("partner down")
        return n

    def call(n: int, fail: bool) -> int:
        return int(_run(flaky, n, fail)[0])

    breaker = CircuitBreaker("partner", url=URL, prefix=prefix, failure_threshold=3, recovery_timeout=5)
    for n in (1, 2):
        with pytest.raises(ConnectionError):
            call(n, True)
    assert call(3, False) == 3  # its success rides in the completion round trip and resets the count
    for n in (4, 5):
        with pytest.raises(ConnectionError):
            call(n, True)
    assert breaker.state().state.value == "closed", "two failures since the success: still closed"
    with pytest.raises(ConnectionError):
        call(6, True)
    assert breaker.state().state.value == "open", "the third consecutive failure opens it"


def test_a_lost_admission_reply_is_asked_again_with_the_same_owners(
    app: Celery, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Counter[str]] = []
    held: list[tuple[int, int]] = []
    charge = _guarded(app, seen, held)
    real_call = admission_module.Admission._call
    lost: list[int] = []

    def runs_then_loses_the_reply(self: Any, rt: Any, script: Any, keys: Any, args: Any) -> Any:
        real_call(self, rt, script, keys, args)  # Redis ran it: slot, lock and claim are granted
        lost.append(1)
        raise redis.exceptions.ConnectionError("connection reset after the script ran")

    monkeypatch.setattr(admission_module.Admission, "_call", runs_then_loses_the_reply)
    result, _ = _run(charge, "o-7")

    assert lost == [1], "the fault fired"
    assert result == "charged o-7", "the lock's own hold was given back to it, not found busy"
    assert held[-1] == (1, 1), "one bulkhead slot, not two"
    slots, lock = _keys(prefix, "o-7")
    client = redis.Redis.from_url(URL)
    assert client.zcard(slots) == 0 and not client.exists(lock)
    client.close()


def test_a_guard_that_cannot_join_ends_the_admission_before_the_guards_after_it(app: Celery, prefix: str) -> None:
    other_client = redis.Redis.from_url(URL)  # not the app's client: this bulkhead asks on its own
    full = Bulkhead("elsewhere", 1, lease=30, client=other_client, prefix=prefix)
    assert full.try_acquire().slot is not None

    @app.task(
        shared=False,
        base=ReliableTask,
        bind=True,
        name="adm.elsewhere",
        idempotency_key="e:{order}",
        circuit_breaker="partner",
        bulkhead=full,
        lock_key="order:{order}",
    )
    def elsewhere(self: ReliableTask, order: str) -> str:
        return order

    with pytest.raises(Ignore):  # parked: the bulkhead is full
        _run(elsewhere, "o-8")

    client = redis.Redis.from_url(URL)
    lock = _keys(prefix, "o-8")[1]
    assert not client.exists(lock) and not client.exists(f"{lock}:fence"), "the lock was never granted"
    assert not [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":claim")], "nor the claim"
    client.close()
    other_client.close()


def test_a_probe_asked_again_with_its_token_is_the_same_probe(prefix: str) -> None:
    from celery_reliable import CircuitBreaker

    breaker = CircuitBreaker("probe", url=URL, prefix=prefix, failure_threshold=1, recovery_timeout=0.1)
    breaker.record(breaker.allow(), "failure")  # opens it
    time.sleep(0.15)
    first = breaker.allow(token="lost-reply")
    assert first and first.state.value == "half_open"
    again = breaker.allow(token="lost-reply")  # re-sent after its reply was lost
    assert again and again.generation == first.generation
    assert not breaker.allow(), "still one probe out of one: a new token is refused"
    assert breaker.state().probes_out == 1


def test_a_failed_completion_pipeline_gives_back_one_by_one(
    app: Celery, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Counter[str]] = []
    charge = _guarded(app, seen)
    real_send = admission_module.Admission._send
    failed: list[int] = []

    def pipeline_fails(rt: Any, calls: Any) -> Any:
        if len(calls) > 1:
            failed.append(len(calls))
            raise redis.exceptions.ConnectionError("connection reset while sending the pipeline")
        return real_send(rt, calls)

    monkeypatch.setattr(admission_module.Admission, "_send", staticmethod(pipeline_fails))
    assert _run(charge, "o-9")[0] == "charged o-9"

    assert failed == [4], "the claim completion, lock, slot and breaker were one pipeline, and it failed"
    slots, lock = _keys(prefix, "o-9")
    client = redis.Redis.from_url(URL)
    assert client.zcard(slots) == 0 and not client.exists(lock)
    assert [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":done")], "the key completed"
    assert not [k for k in client.scan_iter(match=f"{prefix}:idem:*") if k.endswith(b":claim")]
    client.close()
