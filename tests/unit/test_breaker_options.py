"""Circuit breaker options, classification, keys, errors and wiring: everything without Redis."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio

import celery_reliable.breaker as breaker_pkg
from celery_reliable.breaker import BreakerOptions, CircuitBreaker, State, circuit_breaker
from celery_reliable.breaker.options import DEFAULT_COUNT_ON
from celery_reliable.breaker.state import Permit
from celery_reliable.breaker.store import ScriptArgs, breaker_keys
from celery_reliable.errors import CircuitOpen, ConfigurationError, ReliableError, UnknownOptionError
from celery_reliable.retries import RetryPolicy, on


class Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


def test_the_seed_defaults() -> None:
    """50 % failures over 10 calls (at least 10 recorded), 30 s recovery, one probe."""
    o = BreakerOptions()
    assert (o.failure_rate_threshold, o.window_type, o.window_calls, o.minimum_calls) == (0.5, "count", 10, 10)
    assert (o.recovery_timeout_ms, o.half_open_max_calls, o.success_threshold) == (30_000, 1, 1)
    assert o.failure_threshold is None and o.slow_call_threshold_ms is None and o.on_redis_error == "allow"
    assert o.uses_window and o.probe_lease_ms == 60_000 and o.ttl_ms >= 86_400_000


def test_failure_threshold_alone_is_the_consecutive_form() -> None:
    o = BreakerOptions(failure_threshold=5, recovery_timeout=30)
    assert o.failure_threshold == 5 and o.failure_rate_threshold is None and not o.uses_window
    assert o.script_args()[1] == "n"  # no window kept
    both = BreakerOptions(failure_threshold=5, failure_rate_threshold=0.25)
    assert both.failure_threshold == 5 and both.failure_rate_threshold == 0.25 and both.uses_window


def test_time_windows() -> None:
    o = BreakerOptions(window=timedelta(seconds=30))
    assert o.window_type == "time" and o.window_ms == 30_000 and (o.buckets, o.bucket_ms) == (30, 1000)
    assert o.minimum_calls == 10
    long = BreakerOptions(window=600, window_type="time")
    assert (long.buckets, long.bucket_ms) == (60, 10_000)
    short = BreakerOptions(window=0.5, window_type="time", minimum_calls=100)
    assert (short.buckets, short.bucket_ms, short.minimum_calls) == (10, 50, 100)


def test_minimum_calls_default_fits_a_small_count_window() -> None:
    assert BreakerOptions(window=4).minimum_calls == 4
    assert BreakerOptions(window=100).minimum_calls == 10


@pytest.mark.parametrize(
    ("kwargs", "name", "text"),
    [
        ({"failure_rate_threshold": 50}, "failure_rate_threshold", "a fraction: 0.5 for 50%"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold", "(0, 1]"),
        ({"failure_rate_threshold": float("nan")}, "failure_rate_threshold", "(0, 1]"),
        ({"failure_rate_threshold": "50%"}, "failure_rate_threshold", "expected a fraction"),
        ({"failure_rate_threshold": None}, "failure_rate_threshold", "nothing could open this breaker"),
        ({"window": 0}, "window", "between 1 and 100000"),
        ({"window": 2.5}, "window", "expected an int"),
        ({"window": True}, "window", "expected an int"),
        ({"window": timedelta(seconds=5), "window_type": "count"}, "window", "not a timedelta"),
        ({"window": 0.001, "window_type": "time"}, "window", "between 0.01s and 86400s"),
        ({"window_type": "sliding"}, "window_type", "'count' or 'time'"),
        ({"window": 5, "minimum_calls": 6}, "minimum_calls", "between 1 and 5"),
        ({"minimum_calls": 0}, "minimum_calls", "between 1 and 10"),
        ({"failure_threshold": 0}, "failure_threshold", "between 1 and"),
        ({"recovery_timeout": 0}, "recovery_timeout", "between 0.001s"),
        ({"recovery_timeout": -1}, "recovery_timeout", "between"),
        ({"recovery_timeout": "30s"}, "recovery_timeout", "expected seconds"),
        ({"recovery_timeout": float("inf")}, "recovery_timeout", "between"),
        ({"half_open_max_calls": 0}, "half_open_max_calls", "between 1 and 1000"),
        ({"success_threshold": 0}, "success_threshold", "between 1 and 1"),
        ({"success_threshold": 3, "half_open_max_calls": 2}, "success_threshold", "between 1 and 2"),
        ({"slow_call_threshold": 0}, "slow_call_threshold", "between"),
        ({"slow_call_rate_threshold": 1.5}, "slow_call_rate_threshold", "(0, 1]"),
        ({"count_on": "ConnectionError"}, "count_on", "expected a Condition"),
        ({"ignore_on": RetryPolicy()}, "ignore_on", "expected a Condition"),
        ({"probe_lease": 0}, "probe_lease", "between"),
        ({"on_redis_error": "open"}, "on_redis_error", "'allow' or 'deny'"),
    ],
)
def test_wrong_options_name_the_parameter(kwargs: dict[str, Any], name: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BreakerOptions(**kwargs)
    assert info.value.name == name and text in str(info.value), str(info.value)


def test_a_slow_call_rule_alone_can_open_the_breaker() -> None:
    o = BreakerOptions(failure_rate_threshold=None, slow_call_threshold=2, slow_call_rate_threshold=0.5)
    assert o.uses_window and o.slow_call_threshold_ms == 2000
    assert o.script_args()[6] == 500_000  # slow rate in parts per million


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "success"),
        (ConnectionError("refused"), "failure"),
        (TimeoutError(), "failure"),
        (asyncio.TimeoutError(), "failure"),
        (RuntimeError("boom"), "failure"),  # not the caller's fault: counts
        (Status(503), "failure"),
        (Status(429), "failure"),
        (Status(401), "success"),  # the dependency answered: the caller's fault
        (Status(404), "success"),
        (TypeError("bad call"), "success"),
        (ConfigurationError("x", "y"), "success"),
        (KeyboardInterrupt(), "ignored"),
        (asyncio.CancelledError(), "ignored"),
    ],
)
def test_default_classification_follows_the_retry_policy_sets(exc: BaseException | None, outcome: str) -> None:
    assert BreakerOptions().outcome_of(exc) == outcome


def test_count_on_and_ignore_on() -> None:
    class Declined(Exception):
        pass

    o = BreakerOptions(count_on=(ConnectionError, TimeoutError), ignore_on=on(Declined))
    assert o.outcome_of(ConnectionError()) == "failure"
    assert o.outcome_of(RuntimeError()) == "success"
    assert o.outcome_of(Declined()) == "ignored"
    ignored_first = BreakerOptions(ignore_on=ConnectionRefusedError)
    assert ignored_first.outcome_of(ConnectionRefusedError()) == "ignored"
    assert ignored_first.outcome_of(ConnectionResetError()) == "failure"


def test_count_on_takes_a_retry_policys_classification() -> None:
    o = BreakerOptions(count_on=RetryPolicy())  # its breaker_on: TRANSIENT only
    assert o.outcome_of(ConnectionError()) == "failure" and o.outcome_of(RuntimeError()) == "success"
    assert DEFAULT_COUNT_ON(RuntimeError()) and not DEFAULT_COUNT_ON(TypeError())


def test_keys_share_one_cluster_hash_tag() -> None:
    assert breaker_keys("reliable", "stripe") == [
        "reliable:cb:{stripe}",
        "reliable:cb:{stripe}:w",
        "reliable:cb:{stripe}:p",
    ]
    odd = breaker_keys("p", "a{b}")
    assert all(k.startswith("p:cb:{#") for k in odd) and len({k.split("}")[0] for k in odd}) == 1


def test_script_arguments_use_the_injected_clock() -> None:
    now = [1234.5678]
    args = ScriptArgs(BreakerOptions(window=timedelta(seconds=20)), clock=lambda: now[0])
    assert args.admit("tok")[:6] == ["1234568", "30000", "1", "60000", "tok", args.admit("tok")[5]]
    assert args.record(3, "", "failure", 12)[:5] == ["1234568", "3", "", "f", "12"]
    assert args.control("state")[:5] == ["1234568", "state", "t", "20", "1000"]
    assert ScriptArgs(BreakerOptions()).now() == ""  # the server's clock


def test_circuit_open_carries_retry_after_and_rebuilds_from_args() -> None:
    err = CircuitOpen("stripe", 12.5)
    assert isinstance(err, ReliableError) and (err.name, err.retry_after) == ("stripe", 12.5)
    assert str(err) == "circuit breaker 'stripe' is open; try again in 12.5s"
    again = type(err)(*err.args)  # how Celery rebuilds a task's exception
    assert (again.name, again.retry_after, str(again)) == (err.name, err.retry_after, str(err))


def test_breaker_checks_its_arguments() -> None:
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker("")
    with pytest.raises(ConfigurationError, match="client"):
        CircuitBreaker("x", client="redis://localhost")
    with pytest.raises(ConfigurationError, match="either client= or url="):
        CircuitBreaker("x", redis.Redis(), url="redis://localhost")
    with pytest.raises(ConfigurationError, match="clock"):
        CircuitBreaker("x", clock=12.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="recovery_timeout"):
        CircuitBreaker("x", recovery_timeout=timedelta(days=2))


def test_a_client_of_the_wrong_kind_is_refused_before_any_io() -> None:
    sync = CircuitBreaker("x", redis.Redis(port=1))
    with pytest.raises(ConfigurationError, match="plain methods"):
        asyncio.run(sync.aallow())
    aio = CircuitBreaker("x", redis.asyncio.Redis(port=1))
    with pytest.raises(ConfigurationError, match="a\\* methods"):
        aio.allow()
    with pytest.raises(ConfigurationError, match="outcome"):
        sync.record(Permit(True, State.CLOSED, 0), "fail")  # type: ignore[arg-type]


def test_decorator_names_the_breaker_after_the_function() -> None:
    @circuit_breaker(failure_threshold=5, recovery_timeout=30)
    async def call_external_api() -> None: ...

    @circuit_breaker
    def fetch() -> None: ...

    @circuit_breaker("stripe", window=20)
    def charge() -> None: ...

    assert asyncio.iscoroutinefunction(call_external_api) and call_external_api.__name__ == "call_external_api"
    b = call_external_api.breaker  # type: ignore[attr-defined]
    assert b.name.endswith("test_decorator_names_the_breaker_after_the_function.<locals>.call_external_api")
    assert b.options.failure_threshold == 5 and b.options.recovery_timeout_ms == 30_000
    assert fetch.breaker.options.failure_rate_threshold == 0.5  # type: ignore[attr-defined]
    assert charge.breaker.name == "stripe" and charge.breaker.options.window_calls == 20  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="window"):
        circuit_breaker(window=-1)


def test_public_names() -> None:
    assert breaker_pkg.__all__ == sorted(breaker_pkg.__all__, key=lambda n: (not n.isupper(), n))
    for name in breaker_pkg.__all__:
        assert getattr(breaker_pkg, name) is not None


def test_decorator_refuses_unknown_options_with_a_hint() -> None:
    with pytest.raises(UnknownOptionError, match="did you mean 'recovery_timeout'"):
        circuit_breaker(recovery_timout=30)
