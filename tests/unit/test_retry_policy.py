"""RetryPolicy: jittered delays (bounds and distribution), Retry-After, classification, checks."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from datetime import timedelta
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import pytest

from celery_reliable.errors import ConfigurationError, SerializationError
from celery_reliable.retries import Decision, RetryPolicy, on, parse_retry_after, retry_after_of

N = 10_000


class HttpError(Exception):
    """An HTTP client error: a status and headers on ``response``."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status, "headers": headers or {}})()


def ceiling(policy: RetryPolicy, n: int) -> float:
    return min(policy.cap, policy.base * policy.multiplier**n)


# -- delays -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(12))
def test_full_jitter_stays_within_zero_and_the_ceiling(n: int) -> None:
    policy, rng = RetryPolicy(base=0.1, cap=30.0), random.Random(n)
    delays = [policy.delay(n, rng=rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling(policy, n) for d in delays)
    assert max(delays) > 0.95 * ceiling(policy, n)  # it uses the whole interval
    assert ceiling(policy, 11) == 30.0  # 0.1 * 2**11 = 204.8, capped


@pytest.mark.parametrize("n", range(10))
def test_equal_jitter_stays_within_half_and_full(n: int) -> None:
    policy, rng = RetryPolicy(base=0.2, cap=10.0, multiplier=3.0, jitter="equal"), random.Random(n)
    top = ceiling(policy, n)
    assert all(top / 2 <= policy.delay(n, rng=rng) <= top for _ in range(2000))


def test_no_jitter_is_the_exact_exponential_ceiling() -> None:
    policy = RetryPolicy(base=0.1, cap=30.0, jitter="none")
    assert [policy.delay(n) for n in range(10)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0]
    assert policy.delay(10_000) == 30.0  # no OverflowError for a huge retry number
    assert RetryPolicy(base=2, cap=5, multiplier=1, jitter="none").delay(50) == 2.0


def test_decorrelated_jitter_bounds() -> None:
    policy, rng = RetryPolicy(base=0.1, cap=5.0, jitter="decorrelated"), random.Random(7)
    first = [policy.delay(0, rng=rng) for _ in range(2000)]
    assert all(0.1 <= d <= 0.3 for d in first) and max(first) > 0.29
    previous = 0.1
    for n in range(200):  # a chain: each delay in [base, min(cap, 3 * previous)]
        delay = policy.delay(n, previous=previous, rng=rng)
        assert 0.1 <= delay <= min(5.0, 3 * previous) + 1e-12
        previous = delay
    assert all(0.1 <= policy.delay(n, rng=rng) <= 5.0 for n in range(40))  # no state: ceiling(n-1) stands in


def _ks_statistic(samples: list[float]) -> float:
    """Kolmogorov-Smirnov distance between the samples (in [0, 1]) and uniform on [0, 1]."""
    xs, n = sorted(samples), len(samples)
    return max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(xs))


@pytest.mark.parametrize("n", range(6))
def test_full_jitter_is_uniform_kolmogorov_smirnov(n: int) -> None:
    policy, rng = RetryPolicy(base=0.1, cap=30.0), random.Random(1000 + n)
    top = ceiling(policy, n)
    scaled = [policy.delay(n, rng=rng) / top for _ in range(N)]
    critical = 1.628 / math.sqrt(N)  # alpha = 0.01
    assert _ks_statistic(scaled) < critical
    # and the test has teeth: equal jitter, read as if it were full jitter, is far off
    equal = RetryPolicy(base=0.1, cap=30.0, jitter="equal")
    assert _ks_statistic([equal.delay(n, rng=rng) / top for _ in range(N)]) > 10 * critical


@pytest.mark.parametrize("n", range(6))
def test_equal_jitter_upper_half_is_uniform_chi_square(n: int) -> None:
    policy, rng = RetryPolicy(base=0.1, cap=30.0, jitter="equal"), random.Random(2000 + n)
    half, bins = ceiling(policy, n) / 2, 20
    counts = [0] * bins
    for _ in range(N):
        counts[min(bins - 1, int((policy.delay(n, rng=rng) - half) / half * bins))] += 1
    expected = N / bins
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 43.82  # 19 degrees of freedom, p = 0.001


# -- Retry-After ------------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_TS = parsedate_to_datetime(DATE).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        (b"3", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (DATE, 90.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 90.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 90.0),  # obsolete asctime (no zone: GMT)
        (12, 12.0),
        (timedelta(minutes=2), 120.0),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        (float("nan"), None),
        (True, None),
    ],
)
def test_parse_retry_after(value: object, expected: float | None) -> None:
    assert parse_retry_after(value, now=DATE_TS - 90) == expected


def test_a_date_in_the_past_means_now() -> None:
    assert parse_retry_after(DATE, now=DATE_TS + 3600) == 0.0


@pytest.mark.parametrize(
    "exc",
    [
        type("Limited", (Exception,), {"retry_after": 42})(),
        HttpError(429, {"Retry-After": "42"}),
        type("Hdrs", (Exception,), {"headers": {"RETRY-AFTER": "42"}})(),  # a plain dict, odd case
    ],
)
def test_retry_after_from_attribute_or_headers(exc: Exception) -> None:
    assert retry_after_of(exc) == 42.0 == RetryPolicy().retry_after(exc)


def test_retry_after_http_date_uses_the_clock() -> None:
    exc = HttpError(503, {"Retry-After": formatdate(time.time() + 120, usegmt=True)})
    assert 117.0 <= (RetryPolicy().retry_after(exc) or 0) <= 120.0


def test_retry_after_from_a_real_requests_response() -> None:
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code, response.headers["retry-after"] = 429, "15"
    exc = requests.HTTPError(response=response)
    assert RetryPolicy().classify(exc, 1) == Decision(
        "retry", "retryable", 15.0, "HTTPError (HTTP 429) on attempt 1 of 5"
    )


def test_retry_after_is_obeyed_above_cap_and_gives_up_above_max_retry_after() -> None:
    policy = RetryPolicy(cap=30.0, max_retry_after=600)
    assert policy.classify(HttpError(503, {"Retry-After": "120"}), 1).delay == 120.0
    assert policy.delay(0, HttpError(503, {"Retry-After": "120"})) == 120.0
    gave_up = policy.classify(HttpError(503, {"Retry-After": "7200"}), 1)
    assert (gave_up.action, gave_up.reason, gave_up.delay) == ("dead_letter", "exhausted", None)
    assert "max_retry_after" in gave_up.detail


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "attempt", "action", "reason"),
    [
        (HttpError(401), 1, "dead_letter", "permanent"),  # never retry a 401
        (HttpError(404), 1, "dead_letter", "permanent"),
        (TypeError("missing argument"), 1, "dead_letter", "permanent"),
        (SerializationError("args[0]", object()), 1, "dead_letter", "permanent"),
        (HttpError(503), 1, "retry", "retryable"),
        (HttpError(429), 4, "retry", "retryable"),
        (ConnectionResetError(), 4, "retry", "retryable"),
        (ConnectionResetError(), 5, "dead_letter", "exhausted"),
        (HttpError(503), 9, "dead_letter", "exhausted"),
        (ValueError("anything else"), 1, "retry", "retryable"),
        (KeyboardInterrupt(), 1, "dead_letter", "not_retryable"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_classification_table(exc: BaseException, attempt: int, action: str, reason: str) -> None:
    decision = RetryPolicy(max_attempts=5).classify(exc, attempt, rng=random.Random(0))
    assert (decision.action, decision.reason) == (action, reason)
    assert (decision.delay is not None) == (action == "retry") == decision.should_retry
    if decision.delay is not None and not (isinstance(exc, HttpError) and exc.response.headers):
        assert 0 <= decision.delay <= 0.1 * 2 ** (attempt - 1)  # retry n = attempt - 1
        assert decision.delay_ms == math.ceil(decision.delay * 1000)


def test_retry_on_and_dont_retry_on() -> None:
    narrow = RetryPolicy(retry_on=(ConnectionError, TimeoutError))
    assert narrow.classify(ValueError(), 1).reason == "not_retryable"
    assert narrow.classify(TimeoutError(), 1).reason == "retryable"
    assert RetryPolicy(dont_retry_on=()).classify(TypeError(), 1).reason == "retryable"
    assert RetryPolicy(dont_retry_on=on(ValueError)).classify(ValueError(), 1).reason == "permanent"
    assert RetryPolicy(max_attempts=1).classify(ConnectionError(), 1).reason == "exhausted"


def test_counts_for_breaker() -> None:
    policy = RetryPolicy()
    assert policy.counts_for_breaker(ConnectionError()) and policy.counts_for_breaker(HttpError(503))
    assert not policy.counts_for_breaker(HttpError(401)) and not policy.counts_for_breaker(HttpError(404))
    assert not policy.counts_for_breaker(TypeError()) and not policy.counts_for_breaker(KeyboardInterrupt())
    assert RetryPolicy(breaker_on=ValueError).counts_for_breaker(ValueError())


def test_policy_is_immutable_comparable_and_replaceable() -> None:
    policy = RetryPolicy(base=timedelta(milliseconds=250), cap=timedelta(seconds=5))
    assert (policy.base, policy.cap) == (0.25, 5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.cap = 1  # type: ignore[misc]
    assert policy == RetryPolicy(base=0.25, cap=5) and hash(policy) == hash(RetryPolicy(base=0.25, cap=5))
    longer = policy.replace(max_attempts=9)
    assert longer.max_attempts == 9 and longer.base == 0.25 and longer.dont_retry_on is policy.dont_retry_on
    assert repr(RetryPolicy()) == (
        "RetryPolicy(max_attempts=5, base=0.1, cap=30.0, multiplier=2.0, jitter='full', max_retry_after=3600.0)"
    )


# -- mistakes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts: must be at least 1, got 0"),
        ({"max_attempts": 2.5}, "max_attempts: expected an int, got float 2.5"),
        ({"max_attempts": True}, "max_attempts: expected an int, got bool True"),
        ({"base": 0}, "base: must be a positive, finite number of seconds, got 0"),
        ({"base": -1}, "base: must be a positive, finite number of seconds, got -1"),
        ({"base": float("inf")}, "base: must be a positive, finite number of seconds, got inf"),
        ({"base": "1"}, "base: expected seconds (int or float) or a timedelta, got '1'"),
        ({"base": 0.0001}, "base: must be at least one millisecond, got 0.0001"),
        ({"cap": 0}, "cap: must be a positive, finite number of seconds, got 0"),
        ({"cap": 0.05}, "cap: must be at least base (0.1s), got 0.05"),
        ({"multiplier": 0.5}, "multiplier: must be a finite number in [1.0, inf), got 0.5"),
        ({"multiplier": "2"}, "multiplier: expected a number, got str '2'"),
        ({"jitter": "random"}, "jitter: expected one of 'full', 'equal', 'decorrelated', 'none', got 'random'"),
        ({"jitter": None}, "jitter: expected one of"),
        ({"retry_on": "ConnectionError"}, "retry_on: expected a Condition, an exception class"),
        ({"dont_retry_on": [TypeError]}, "dont_retry_on: expected a Condition"),
        ({"breaker_on": 3}, "breaker_on: expected a Condition"),
        ({"max_retry_after": -1}, "max_retry_after: must be a positive"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    assert str(info.value).startswith(message)
    assert info.value.name == next(iter(kwargs))


def test_bad_call_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"^attempt: must be at least 1"):
        RetryPolicy().classify(ValueError(), 0)
    with pytest.raises(ConfigurationError, match=r"^retry_number: must be at least 0"):
        RetryPolicy().delay(-1)
    with pytest.raises(ConfigurationError, match=r"^retry_number: expected an int"):
        RetryPolicy().delay(1.0)  # type: ignore[arg-type]
