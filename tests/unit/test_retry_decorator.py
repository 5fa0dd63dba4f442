"""``@retry`` on plain and async functions: attempts, recorded sleeps, giving up."""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import pytest

from celery_reliable.errors import ConfigurationError, UnknownOptionError
from celery_reliable.retries import RetryPolicy, retry


class Flaky:
    """Fails with the given errors in turn, then returns ``"ok"``; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return f"ok {args} {kwargs}"


def notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


# -- sync -------------------------------------------------------------------------------


def test_sync_retries_until_success_sleeping_the_policy_delays() -> None:
    slept: list[float] = []
    flaky = Flaky(ConnectionError("1"), TimeoutError("2"))
    call = retry(max_attempts=3, base_delay=1.0, jitter="none", sleep=slept.append)(flaky)
    assert call(1, b=2) == "ok (1,) {'b': 2}"
    assert flaky.calls == 3 and slept == [1.0, 2.0]


def test_sync_exhausted_reraises_the_last_error_with_the_attempt_count() -> None:
    slept: list[float] = []
    errors = [ConnectionError(f"boom {i}") for i in range(4)]
    flaky = Flaky(*errors)
    call = retry(max_attempts=3, base_delay=0.5, sleep=slept.append, rng=random.Random(1))(flaky)
    with pytest.raises(ConnectionError) as info:
        call()
    assert info.value is errors[2] and flaky.calls == 3 and len(slept) == 2
    assert 0 <= slept[0] <= 0.5 and 0 <= slept[1] <= 1.0
    if sys.version_info >= (3, 11):
        assert notes(info.value) == [
            "celery-reliable @retry: gave up after 3 attempts (exhausted): ConnectionError on attempt 3 of 3"
        ]


def test_permanent_error_is_not_retried() -> None:
    slept: list[float] = []
    flaky = Flaky(TypeError("takes 2 positional arguments"), ConnectionError())
    with pytest.raises(TypeError) as info:
        retry(max_attempts=5, sleep=slept.append)(flaky)()
    assert flaky.calls == 1 and slept == []
    if sys.version_info >= (3, 11):
        assert "gave up after 1 attempt (permanent)" in notes(info.value)[0]


def test_base_exceptions_pass_through_at_once() -> None:
    flaky = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as info:
        retry(sleep=lambda s: None)(flaky)()
    assert flaky.calls == 1 and notes(info.value) == []


def test_on_retry_sees_each_failed_attempt_and_policy_object_is_used() -> None:
    seen: list[tuple[str, int, float]] = []
    policy = RetryPolicy(max_attempts=4, base=0.2, jitter="none", retry_on=ValueError)
    flaky = Flaky(ValueError("a"), ValueError("b"), ValueError("c"))

    @retry(policy=policy, on_retry=lambda exc, n, delay: seen.append((str(exc), n, delay)), sleep=lambda s: None)
    def work() -> str:
        return flaky()

    assert work() == "ok () {}" and work.__name__ == "work"
    assert seen == [("a", 1, 0.2), ("b", 2, 0.4), ("c", 3, 0.8)]


def test_bare_decorator_uses_the_defaults() -> None:
    @retry
    def fine(x: int) -> int:
        return x + 1

    assert fine(1) == 2


def test_a_long_base_delay_raises_the_default_cap() -> None:
    slept: list[float] = []
    flaky = Flaky(ConnectionError(), ConnectionError())
    assert retry(base_delay=60, jitter="none", sleep=slept.append)(flaky)() == "ok () {}"
    assert slept == [60.0, 60.0]  # the cap is then base_delay itself
    with pytest.raises(ConfigurationError, match=r"^cap: must be at least base"):
        retry(base_delay=60, cap=10)


def test_retry_after_sets_the_sleep() -> None:
    slept: list[float] = []

    class Limited(Exception):
        retry_after = 7.5

    flaky = Flaky(Limited())
    assert retry(sleep=slept.append)(flaky)() == "ok () {}" and slept == [7.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"policy": RetryPolicy(), "max_attempts": 2}, ConfigurationError, "policy: pass either policy="),
        ({"policy": RetryPolicy(), "cap": 2}, ConfigurationError, "policy: pass either policy="),
        ({"policy": "fast"}, ConfigurationError, "policy: expected a RetryPolicy"),
        ({"max_attempts": 0}, ConfigurationError, "max_attempts: must be at least 1"),
        ({"base_delay": -1}, ConfigurationError, "base_delay: must be a positive"),
        ({"jiter": "full"}, UnknownOptionError, "jiter: unknown retry option; did you mean 'jitter'?"),
        ({"base": 1.0}, UnknownOptionError, "did you mean 'base_delay'?"),
    ],
)
def test_mistakes_fail_at_decoration(kwargs: dict[str, Any], error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        retry(**kwargs)
    assert needle in str(info.value)


# -- async ------------------------------------------------------------------------------


def test_async_retries_with_injected_sync_or_async_sleep() -> None:
    slept: list[float] = []
    flaky = Flaky(ConnectionError(), ConnectionError())

    @retry(max_attempts=3, base_delay=0.01, jitter="none", sleep=slept.append)
    async def call(x: int) -> str:
        await asyncio.sleep(0)
        return flaky(x)

    assert asyncio.run(call(5)) == "ok (5,) {}" and flaky.calls == 3 and slept == [0.01, 0.02]

    awaited: list[float] = []

    async def async_sleep(seconds: float) -> None:
        awaited.append(seconds)

    async def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
        awaited.append(-attempt)

    flaky2 = Flaky(TimeoutError())

    @retry(max_attempts=2, base_delay=0.01, jitter="none", sleep=async_sleep, on_retry=on_retry)
    async def call2() -> str:
        return flaky2()

    assert asyncio.run(call2()) == "ok () {}" and awaited == [-1, 0.01]


def test_async_default_sleep_is_asyncio_sleep_and_exhaustion_reraises() -> None:
    errors = [ConnectionError(str(i)) for i in range(3)]
    flaky = Flaky(*errors)

    @retry(max_attempts=3, base_delay=0.001, cap=0.002)
    async def call() -> str:
        return flaky()

    assert asyncio.iscoroutinefunction(call)
    with pytest.raises(ConnectionError) as info:
        asyncio.run(call())
    assert info.value is errors[2] and flaky.calls == 3


def test_async_permanent_and_cancellation_are_not_retried() -> None:
    slept: list[float] = []
    flaky = Flaky(PermissionError("403-ish but an OSError"), AttributeError("bug"))

    @retry(max_attempts=5, sleep=slept.append, dont_retry_on=AttributeError)
    async def call() -> str:
        return flaky()

    with pytest.raises(AttributeError):
        asyncio.run(call())
    assert flaky.calls == 2 and len(slept) == 1

    cancelled = Flaky(asyncio.CancelledError())

    @retry(max_attempts=5, sleep=slept.append)
    async def cancel() -> str:
        return cancelled()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancel())
    assert cancelled.calls == 1
