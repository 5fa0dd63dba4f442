"""The breaker's state machine against a real Redis (db 3), on an injected clock.

Every transition and threshold, both window types, the consecutive form, slow calls,
the half-open bound, probe leases, stale outcomes, reset, the signal and the log line,
asyncio, an unreachable Redis, and the round trips per call. The clock is passed to the
Lua scripts (their ``now`` argument), so the scripts that run in production are the ones
tested; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_reliable.breaker import (
    CircuitBreaker,
    Permit,
    State,
    StateChange,
    breaker_state_changed,
    circuit_breaker,
)
from celery_reliable.breaker.options import Outcome
from celery_reliable.errors import BackendUnavailable, CircuitOpen
from tests.harness import free_port

URL = "redis://127.0.0.1:6379/3"
T0 = 1_700_000_000.0


class Clock:
    """Unix seconds that move only when told."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def changes() -> Iterator[list[StateChange]]:
    """Every StateChange announced during the test, in order."""
    seen: list[StateChange] = []

    def receiver(sender: Any, change: StateChange, **kwargs: Any) -> None:
        seen.append(change)

    breaker_state_changed.connect(receiver, weak=False)
    yield seen
    breaker_state_changed.disconnect(receiver)


def run(b: CircuitBreaker, outcomes: str, duration: float = 0.0) -> list[StateChange | None]:
    """Admit and record one call per letter: ``s`` success, ``f`` failure, ``i`` ignored."""
    names = {"s": "success", "f": "failure", "i": "ignored"}
    out = []
    for letter in outcomes:
        permit = b.allow()
        assert permit, f"call {letter!r} refused: {permit}"
        out.append(b.record(permit, names[letter], duration))  # type: ignore[arg-type]
    return out


def trip(b: CircuitBreaker) -> None:
    """Open a breaker built with failure_threshold=1 or a rate rule over minimum_calls=1."""
    run(b, "f")
    assert b.state().state is State.OPEN


# -- CLOSED -> OPEN: count window ---------------------------------------------------------


def test_failure_rate_over_a_count_window_opens_at_exactly_the_threshold(
    client: redis.Redis, clock: Clock, changes: list[StateChange]
) -> None:
    b = CircuitBreaker("api", client, clock=clock)  # the seed: 50 % over 10 calls
    assert run(b, "fsfsfsfss") == [None] * 9  # 4 of 9: below minimum_calls anyway
    s = b.state()
    assert (s.state, s.calls, s.failures, s.failure_rate) == (State.CLOSED, 9, 4, 4 / 9)
    [change] = run(b, "f")  # 5 of 10 = 50 %
    assert change is not None and (change.old, change.new, change.reason) == (State.CLOSED, State.OPEN, "failure_rate")
    assert (change.calls, change.failures, change.retry_after, change.at) == (10, 5, 30.0, T0)
    assert changes == [change]
    s = b.state()
    assert (s.state, s.retry_after, s.since, s.calls, s.generation) == (State.OPEN, 30.0, T0, 0, 1)


def test_below_the_rate_stays_closed_and_the_ring_forgets_old_calls(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, window=4, failure_rate_threshold=0.5)
    run(b, "fsss")  # 1 of 4
    assert (b.state().calls, b.state().failures) == (4, 1)
    run(b, "s")  # the failure leaves the ring
    assert (b.state().calls, b.state().failures) == (4, 0)
    run(b, "sfs")  # ring: s s f s -> 1 of 4
    assert (b.state().state, b.state().failures) == (State.CLOSED, 1)
    [change] = run(b, "f")  # ring: s f s f -> 2 of 4
    assert change is not None and change.reason == "failure_rate" and (change.calls, change.failures) == (4, 2)


def test_minimum_calls_holds_a_rate_back(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, window=20, minimum_calls=5, failure_rate_threshold=1.0)
    assert run(b, "ffff") == [None] * 4  # 100 %, but 4 calls
    [change] = run(b, "f")
    assert change is not None and change.calls == 5 and change.failures == 5


# -- CLOSED -> OPEN: time window ------------------------------------------------------


def test_failure_rate_over_a_time_window(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, window=10, window_type="time", minimum_calls=4)
    run(b, "fff")  # t=0: 3 failures, below minimum_calls
    clock.advance(10.5)  # they leave the window (buckets of 1 s)
    run(b, "sss")
    s = b.state()
    assert (s.state, s.calls, s.failures) == (State.CLOSED, 3, 0)
    clock.advance(5)
    assert run(b, "f") == [None]  # 1 of 4
    clock.advance(4)
    assert run(b, "f") == [None]  # 2 of 5 (the successes are 9 s old)
    clock.advance(1.5)  # the three successes leave: f f
    s = b.state()
    assert (s.calls, s.failures) == (2, 2)
    assert run(b, "s") == [None]  # 2 of 3: below minimum_calls
    [change] = run(b, "s")  # 2 of 4: 50 %
    assert change is not None and (change.reason, change.calls, change.failures) == ("failure_rate", 4, 2)


def test_a_time_window_keeps_a_bounded_number_of_buckets(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, window=3, window_type="time", failure_rate_threshold=1.0)
    for _ in range(100):
        run(b, "s")
        clock.advance(0.25)
    assert client.hlen(b.keys[1]) <= 10 + 1  # 10 buckets of 300 ms (only calls: no failure or slow)
    assert b.state().calls == 10  # the last 2.7 to 3 s (whole buckets) of calls every 0.25 s


# -- CLOSED -> OPEN: consecutive failures and slow calls ------------------------------


def test_consecutive_failures_the_seed_quick_start(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=5, recovery_timeout=30)
    assert run(b, "ffffsffff") == [None] * 9  # a success resets the count; no rate rule
    assert b.state().consecutive_failures == 4
    assert run(b, "sfsfsfsfsfs") == [None] * 11  # 45 % failures: the rate rule is off anyway
    assert run(b, "ffff") == [None] * 4
    [change] = run(b, "f")
    assert change is not None and change.reason == "consecutive_failures" and change.new is State.OPEN
    assert not client.exists(b.keys[1])  # no window kept for the consecutive form


def test_both_rules_whichever_trips_first(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=3, failure_rate_threshold=0.5, window=10)
    [*_, change] = run(b, "sfsfsfsfsf")
    assert change is not None and change.reason == "failure_rate"
    b.reset()
    [*_, change] = run(b, "fff")
    assert change is not None and change.reason == "consecutive_failures"


def test_slow_call_rate_opens_the_breaker(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker(
        "api", client, clock=clock, window=4, failure_rate_threshold=None, slow_call_threshold=2.0,
        slow_call_rate_threshold=0.5,
    )  # fmt: skip
    run(b, "sss", duration=2.0)  # exactly the threshold is not slow
    run(b, "s", duration=2.001)
    assert (b.state().slow_calls, b.state().state) == (1, State.CLOSED)
    [change] = run(b, "f", duration=5)  # slow failures are slow too; failures alone count nothing here
    assert change is not None and (change.reason, change.slow_calls, change.calls) == ("slow_call_rate", 2, 4)


def test_slow_calls_measured_by_the_context_manager(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker(
        "api", client, clock=clock, window=2, failure_rate_threshold=None, slow_call_threshold=1,
        slow_call_rate_threshold=1.0,
    )  # fmt: skip
    for _ in range(2):
        with b:
            clock.advance(1.5)  # the call takes 1.5 s on the injected clock
    assert b.state().state is State.OPEN


# -- OPEN -> HALF_OPEN -> CLOSED / OPEN ----------------------------------------------


def test_open_refuses_until_the_recovery_timeout(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=30)
    trip(b)
    clock.advance(10)
    denied = b.allow()
    assert not denied and denied.state is State.OPEN and denied.retry_after == 20.0 and denied.token == ""
    with pytest.raises(CircuitOpen) as info:
        b.call(lambda: pytest.fail("called while open"))
    assert info.value.name == "api" and info.value.retry_after == 20.0
    clock.advance(19.999)
    assert not b.allow() and b.allow().retry_after == pytest.approx(0.001)
    clock.advance(0.001)
    permit = b.allow()
    assert permit and permit.state is State.HALF_OPEN and permit.token
    assert permit.change is not None and permit.change.reason == "recovery_timeout"
    assert (permit.change.old, permit.change.new) == (State.OPEN, State.HALF_OPEN)


def test_half_open_hands_out_a_bounded_number_of_probes_then_closes(
    client: redis.Redis, clock: Clock, changes: list[StateChange]
) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=3)
    trip(b)
    clock.advance(5)
    probes = [b.allow() for _ in range(3)]
    assert all(probes) and len({p.token for p in probes}) == 3
    assert [p.change is not None for p in probes] == [True, False, False]  # one transition, announced once
    refused = b.allow()
    assert not refused and refused.state is State.HALF_OPEN and refused.retry_after == 5.0
    assert b.state().probes_out == 3
    assert b.record(probes[0], "success") is None
    assert b.record(probes[1], "success") is None
    assert (b.state().probe_successes, b.state().probes_out) == (2, 1)
    assert not b.allow()  # a successful probe keeps its slot: 3 probes per HALF_OPEN in all
    change = b.record(probes[2], "success")
    assert change is not None and (change.old, change.new, change.reason) == (
        State.HALF_OPEN,
        State.CLOSED,
        "probes_succeeded",
    )
    assert [c.new for c in changes] == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    s = b.state()
    assert (s.state, s.consecutive_failures, s.probes_out, s.calls) == (State.CLOSED, 0, 0, 0)


def test_success_threshold_below_the_bound_closes_early(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker(
        "api", client, clock=clock, failure_threshold=1, recovery_timeout=1, half_open_max_calls=3,
        success_threshold=2,
    )  # fmt: skip
    trip(b)
    clock.advance(1)
    first, second, third = b.allow(), b.allow(), b.allow()
    assert first and second and third and not b.allow()
    b.record(first, "success")
    assert b.record(second, "success") is not None and b.state().state is State.CLOSED
    assert b.record(third, "failure") is None  # a probe of the HALF_OPEN that is over: ignored
    assert b.state().consecutive_failures == 0


def test_a_failed_probe_opens_again_for_a_full_recovery_timeout(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=5, half_open_max_calls=2)
    trip(b)
    clock.advance(5)
    first, second = b.allow(), b.allow()
    b.record(first, "success")
    change = b.record(second, "failure")
    assert change is not None and change.new is State.OPEN and change.reason == "probe_failed"
    assert change.retry_after == 5.0 and b.state().retry_after == 5.0
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow().state is State.HALF_OPEN


def test_a_slow_probe_counts_as_a_failed_one(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=1, slow_call_threshold=0.5)
    trip(b)
    clock.advance(1)
    change = b.record(b.allow(), "success", duration=0.6)
    assert change is not None and change.reason == "probe_slow" and change.new is State.OPEN


def test_an_ignored_error_gives_the_probe_back(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=1)
    trip(b)
    clock.advance(1)
    with pytest.raises(KeyboardInterrupt), b:
        raise KeyboardInterrupt  # neither success nor failure
    s = b.state()
    assert (s.state, s.probes_out, s.probe_successes) == (State.HALF_OPEN, 0, 0)
    with b:
        pass
    assert b.state().state is State.CLOSED


def test_a_lost_probe_permit_expires_so_half_open_cannot_wedge(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=1, probe_lease=10)
    trip(b)
    clock.advance(1)
    lost = b.allow()  # its process dies: never recorded
    assert lost and lost.state is State.HALF_OPEN
    clock.advance(9.999)
    refused = b.allow()
    assert not refused and refused.retry_after == pytest.approx(0.001, abs=1e-3)
    clock.advance(0.001)
    assert b.state().probes_out == 0
    replacement = b.allow()
    assert replacement and replacement.token != lost.token
    assert b.record(replacement, "success") is not None
    assert b.state().state is State.CLOSED


# -- stale outcomes, reset -----------------------------------------------------------


def test_outcomes_from_an_older_generation_are_ignored(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=2, recovery_timeout=1)
    slow_call = b.allow()  # admitted while CLOSED, still running when the breaker opens
    run(b, "ff")
    assert b.record(slow_call, "success") is None  # does not count in OPEN
    clock.advance(1)
    probe = b.allow()
    assert b.record(slow_call, "failure") is None  # nor does its failure re-open HALF_OPEN
    assert b.state().state is State.HALF_OPEN
    b.record(probe, "success")
    assert b.record(slow_call, "failure") is None  # nor count in the new CLOSED window
    assert b.state().consecutive_failures == 0


def test_reset_closes_and_forgets(client: redis.Redis, clock: Clock, changes: list[StateChange]) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=60)
    before = b.allow()
    trip(b)
    change = b.reset()
    assert change is not None and (change.old, change.new, change.reason) == (State.OPEN, State.CLOSED, "reset")
    assert b.reset() is None  # already closed: nothing to announce
    assert [c.reason for c in changes] == ["consecutive_failures", "reset"]
    assert b.record(before, "failure") is None and b.state().state is State.CLOSED
    s = b.state()
    assert (s.state, s.consecutive_failures, s.calls) == (State.CLOSED, 0, 0)
    assert client.ttl(b.keys[0]) > 0 and not client.exists(b.keys[1], b.keys[2])


def test_breakers_with_one_name_share_state_and_other_names_do_not(client: redis.Redis, clock: Clock) -> None:
    a1 = CircuitBreaker("a", client, clock=clock, failure_threshold=1)
    a2 = CircuitBreaker("a", client, clock=clock, failure_threshold=1)
    other = CircuitBreaker("b", client, clock=clock, failure_threshold=1)
    trip(a1)
    assert not a2.allow() and other.allow()
    assert all(client.ttl(k) > 86_000 for k in a1.keys[:1])  # OPEN is never forgotten by expiry


# -- the context manager, the decorator, announcements ----------------------------------


def test_context_manager_classifies_errors(client: redis.Redis, clock: Clock, changes: list[StateChange]) -> None:
    b = CircuitBreaker("api", client, clock=clock, window=4)
    for exc in (TypeError("bad call"), TypeError("again"), ValueError("x")):
        with pytest.raises(type(exc)), b:
            raise exc
    s = b.state()  # TypeError is the caller's fault: counts as a success; ValueError counts
    assert (s.calls, s.failures, s.state) == (3, 1, State.CLOSED)
    with pytest.raises(ConnectionError), b:
        raise ConnectionError("down")
    assert [(c.reason, c.calls, c.failures) for c in changes] == [("failure_rate", 4, 2)]


def test_nested_blocks_of_one_breaker_record_their_own_permits(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=1, half_open_max_calls=2)
    trip(b)
    clock.advance(1)
    with b as outer:
        with pytest.raises(ConnectionError), b as inner:
            assert inner.token != outer.token
            raise ConnectionError
        assert b.state().state is State.OPEN  # the inner probe failed
    assert b.state().state is State.OPEN  # the outer one is stale now: ignored


def test_decorated_sync_function(client: redis.Redis, clock: Clock) -> None:
    calls: list[int] = []

    @circuit_breaker("dep", client, failure_threshold=2, recovery_timeout=30, clock=clock)
    def dependency(x: int) -> int:
        calls.append(x)
        if x < 0:
            raise ConnectionError("down")
        return x * 2

    assert dependency(2) == 4
    for x in (-1, -2):
        with pytest.raises(ConnectionError):
            dependency(x)
    with pytest.raises(CircuitOpen) as info:
        dependency(3)
    assert calls == [2, -1, -2] and info.value.retry_after == 30.0
    clock.advance(30)
    assert dependency(4) == 8 and dependency.breaker.state().state is State.CLOSED  # type: ignore[attr-defined]


def test_each_transition_logs_one_line(client: redis.Redis, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("api", client, clock=clock, failure_threshold=1, recovery_timeout=2)
    with caplog.at_level(logging.INFO, logger="celery_reliable.breaker"):
        trip(b)
        clock.advance(2)
        run(b, "s")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "celery_reliable.breaker"]
    assert lines == [
        ("WARNING", "circuit breaker 'api' closed -> open: consecutive_failures; probes in 2s"),
        ("INFO", "circuit breaker 'api' open -> half_open: recovery_timeout"),
        ("INFO", "circuit breaker 'api' half_open -> closed: probes_succeeded"),
    ]
    assert caplog.records[0].breaker["new_state"] == "open"  # type: ignore[attr-defined]


def test_a_failing_receiver_never_breaks_the_call(client: redis.Redis, clock: Clock) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    breaker_state_changed.connect(broken, weak=False)
    try:
        b = CircuitBreaker("api", client, clock=clock, failure_threshold=1)
        trip(b)
    finally:
        breaker_state_changed.disconnect(broken)


# -- round trips, the server's clock, an unreachable Redis -----------------------------


def test_one_round_trip_to_admit_and_one_to_record(client: redis.Redis) -> None:
    b = CircuitBreaker("api", client, failure_threshold=3)  # the server's clock
    b.state()  # scripts loaded
    sent: list[tuple[Any, ...]] = []
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        return original(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    with b:
        pass
    assert [a[0] for a in sent] == ["EVALSHA", "EVALSHA"]
    sent.clear()
    with pytest.raises(ConnectionError), b:
        raise ConnectionError
    assert len(sent) == 2


def test_the_server_clock_drives_the_state_without_injection(client: redis.Redis) -> None:
    b = CircuitBreaker("api", client, failure_threshold=1, recovery_timeout=0.05)
    trip(b)
    state = b.state()
    assert 0 < state.retry_after <= 0.05 and abs(state.at - client.time()[0]) < 5
    permit = Permit(False, State.OPEN, 0)
    for _ in range(200):  # the recovery timeout passes on the server's clock
        permit = b.allow()
        if permit:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert permit.state is State.HALF_OPEN


def test_unreachable_redis_lets_calls_through_by_default(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("api", url=f"redis://127.0.0.1:{free_port()}/3", failure_threshold=1)  # fail-fast clients
    with caplog.at_level(logging.WARNING, logger="celery_reliable.breaker"):
        assert b.call(lambda: 42) == 42
        with pytest.raises(ConnectionError), b:
            raise ConnectionError("the dependency too")
        assert b.call(lambda: 43) == 43
    warnings = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.breaker"]
    assert len(warnings) == 1 and "Redis unreachable while admitting a call (letting it through)" in warnings[0]


def test_unreachable_redis_can_deny_instead() -> None:
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # redis-py's default retries for seconds
    b = CircuitBreaker("api", dead, failure_threshold=1, on_redis_error="deny")
    with pytest.raises(BackendUnavailable, match="circuit breaker 'api' cannot read its state") as info:
        b.call(lambda: pytest.fail("called without a breaker"))
    assert info.value.backend == "redis" and isinstance(info.value.__cause__, redis.ConnectionError)


# -- asyncio --------------------------------------------------------------------------


def test_the_state_machine_with_an_asyncio_client(client: redis.Redis, clock: Clock) -> None:
    async def echo(value: str) -> str:
        await asyncio.sleep(0)
        return value

    async def scenario() -> None:
        aio = redis.asyncio.Redis.from_url(URL)
        try:
            b = CircuitBreaker("api", aio, clock=clock, window=4, recovery_timeout=10, half_open_max_calls=2)
            outcomes: tuple[Outcome, ...] = ("success", "failure", "success")
            for outcome in outcomes:
                c = await b.arecord(await b.aallow(), outcome)
                assert c is None
            with pytest.raises(TimeoutError):
                async with b:
                    raise TimeoutError
            s = await b.astate()
            assert (s.state, s.calls, s.failures) == (State.OPEN, 0, 0)
            denied = await b.aallow()
            assert not denied and denied.retry_after == 10.0
            with pytest.raises(CircuitOpen):
                await b.acall(asyncio.sleep, 0)
            clock.advance(10)
            first, second = await b.aallow(), await b.aallow()
            assert first.change is not None and first.change.new is State.HALF_OPEN and second
            assert not await b.aallow()
            await b.arecord(first, "success")
            change = await b.arecord(second, "success")
            assert change is not None and change.new is State.CLOSED
            assert await b.acall(echo, "ok") == "ok"
            assert (await b.astate()).calls == 1
            assert await b.areset() is None  # already closed
        finally:
            await aio.aclose()

    asyncio.run(scenario())


def test_decorated_async_function_with_an_asyncio_client(client: redis.Redis, clock: Clock) -> None:
    async def scenario() -> None:
        aio = redis.asyncio.Redis.from_url(URL)
        calls = 0

        @circuit_breaker("async-dep", aio, failure_threshold=5, recovery_timeout=30, clock=clock)
        async def call_external_api() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)
            raise ConnectionError("down")

        try:
            for _ in range(5):
                with pytest.raises(ConnectionError):
                    await call_external_api()
            with pytest.raises(CircuitOpen):
                await call_external_api()
            assert calls == 5
            # concurrent tasks each keep their own permit (a context variable, not the breaker)
            clock.advance(30)
            await call_external_api.breaker.areset()  # type: ignore[attr-defined]
            results = await asyncio.gather(*(call_external_api() for _ in range(4)), return_exceptions=True)
            assert all(isinstance(r, ConnectionError) for r in results)
            assert (await call_external_api.breaker.astate()).consecutive_failures == 4  # type: ignore[attr-defined]
        finally:
            await aio.aclose()

    asyncio.run(scenario())


def test_a_breaker_without_a_client_makes_one_per_event_loop(client: redis.Redis, clock: Clock) -> None:
    b = CircuitBreaker("api", url=URL, clock=clock, failure_threshold=2)

    async def fail_once() -> None:
        with pytest.raises(ConnectionError):
            async with b:
                raise ConnectionError

    asyncio.run(fail_once())  # each asyncio.run is a new loop: a client of another loop would fail
    asyncio.run(fail_once())
    assert b.state().state is State.OPEN  # the plain methods use a sync client of their own
