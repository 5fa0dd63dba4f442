"""RetryBudget against a real Redis (db 7): the bound holds, follows traffic, and is atomic."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from celery_reliable.errors import ConfigurationError
from celery_reliable.retries import RetryBudget, RetryPolicy

URL = "redis://127.0.0.1:6379/7"
ALWAYS_FAILS = ConnectionError("dependency down")


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def one_call(budget: RetryBudget, policy: RetryPolicy) -> int:
    """One call to a dependency failing 100 %: the first attempt, then retries while the
    policy and the budget both allow. Returns the retries granted."""
    budget.record_call()
    attempt, granted = 1, 0
    while policy.classify(ALWAYS_FAILS, attempt).should_retry and budget.try_spend():
        attempt, granted = attempt + 1, granted + 1
    return granted


@pytest.mark.parametrize(
    ("calls", "ratio", "min_per_second", "window"),
    [(100, 0.2, 1.0, 10.0), (250, 0.1, 0.5, 20.0), (37, 0.3, 0.0, 10.0), (10, 1.0, 2.0, 5.0)],
)
def test_retries_stay_within_ratio_times_calls_plus_floor(
    client: redis.Redis, calls: int, ratio: float, min_per_second: float, window: float
) -> None:
    budget = RetryBudget(client, "payments", ratio=ratio, min_per_second=min_per_second, window=window)
    policy = RetryPolicy(max_attempts=5)
    granted = sum(one_call(budget, policy) for _ in range(calls))
    bound = math.floor(ratio * calls + min_per_second * window + 1e-9)
    # Every call wants 4 retries, far more than the budget holds: it is spent to the last retry.
    assert 4 * calls > bound and granted == bound
    state = budget.state()
    assert (state["calls"], state["retries"]) == (calls, bound) and 0 <= state["balance"] < 1
    assert state["reserve"] == min_per_second * window and state["window"] == window


def test_successful_calls_restore_the_budget(client: redis.Redis) -> None:
    budget, policy = RetryBudget(client, "search", ratio=0.2, min_per_second=1.0, window=30), RetryPolicy()
    assert sum(one_call(budget, policy) for _ in range(50)) == 10 + 30
    assert not budget.try_spend()
    budget.record_call(cost=25)  # 25 calls that succeeded at once: they earn 5 retries
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]
    budget.record_call(cost=10)
    assert budget.try_spend(cost=2) and not budget.try_spend()


def test_deposits_and_withdrawals_expire_after_the_window(client: redis.Redis) -> None:
    budget = RetryBudget(client, "expiring", ratio=0.2, min_per_second=2.0, window=1.0)
    started = time.monotonic()
    budget.record_call(cost=50)  # 10 retries, plus a reserve of 2
    assert budget.state()["balance"] == 12.0
    assert sum(budget.try_spend() for _ in range(20)) == 12
    assert time.monotonic() - started < 0.8, "too slow to observe the window"
    time.sleep(1.05)
    state = budget.state()
    assert (state["calls"], state["retries"], state["balance"]) == (0, 0, 2.0)  # only the floor is left
    assert sum(budget.try_spend() for _ in range(5)) == 2
    assert client.hlen(budget.key) <= 2 * 11  # buckets are trimmed
    time.sleep(1.2)
    assert not client.exists(budget.key)  # an idle budget leaves nothing behind


def test_memory_stays_bounded_under_steady_traffic(client: redis.Redis) -> None:
    budget = RetryBudget(client, "steady", window=0.2)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        budget.record_call()
        budget.try_spend()
        assert client.hlen(budget.key) <= 22


def _worker(calls: int, barrier: Any, results: Any) -> None:
    r = redis.Redis.from_url(URL)  # a client of its own: nothing created before fork is used
    budget = RetryBudget(r, "shared", ratio=0.2, min_per_second=0.5, window=60)
    policy = RetryPolicy(max_attempts=5)
    barrier.wait(10)
    started = time.monotonic()
    granted = sum(one_call(budget, policy) for _ in range(calls))
    results.put((granted, started, time.monotonic()))


def test_four_processes_together_keep_the_bound(client: redis.Redis) -> None:
    ctx = multiprocessing.get_context("fork")
    calls, procs = 150, 4
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(calls, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
        assert w.exitcode == 0
    bound = int(0.2 * calls * procs + 0.5 * 60)  # 120 + 30
    granted = sum(g for g, _, _ in outcomes)
    # they really ran at the same time
    assert max(s for _, s, _ in outcomes) < min(e for _, _, e in outcomes), "the workers did not overlap"
    assert granted <= bound
    drained = 0
    while RetryBudget(client, "shared", ratio=0.2, min_per_second=0.5, window=60).try_spend():
        drained += 1
    assert granted + drained == bound  # no retry granted twice, none lost
    state = RetryBudget(client, "shared", ratio=0.2, min_per_second=0.5, window=60).state()
    assert (state["calls"], state["retries"]) == (calls * procs, bound)


def test_asyncio_twin(client: redis.Redis) -> None:
    async def main() -> tuple[list[bool], dict[str, Any]]:
        aclient = redis.asyncio.Redis.from_url(URL)
        try:
            budget = RetryBudget(aclient, "async", ratio=0.5, min_per_second=0.1, window=10)
            await budget.arecord_call(cost=4)  # 2 retries, plus a reserve of 1
            spent = [await budget.atry_spend() for _ in range(4)]
            with pytest.raises(ConfigurationError, match=r"^client: .*use the a\* methods"):
                budget.try_spend()
            return spent, dict(await budget.astate())
        finally:
            await aclient.aclose()

    spent, state = asyncio.run(main())
    assert spent == [True, True, True, False] and state["retries"] == 3 and state["calls"] == 4
    with pytest.raises(ConfigurationError, match="plain methods"):
        asyncio.run(RetryBudget(client, "sync").atry_spend())


def test_keys_share_a_hash_tag(client: redis.Redis) -> None:
    assert RetryBudget(client, "stripe").key == "reliable:budget:{stripe}"
    assert RetryBudget(client, "stripe", prefix="shop").key == "shop:budget:{stripe}"
    braced = RetryBudget(client, "a{b}").key
    assert braced.startswith("reliable:budget:{#") and braced.count("{") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0}, "ratio: must be a finite number in (0.0, 1.0], got 0"),
        ({"ratio": 1.5}, "ratio: must be a finite number in (0.0, 1.0], got 1.5"),
        ({"ratio": 1e-9}, "ratio: must be at least 1e-6"),
        ({"ratio": "0.2"}, "ratio: expected a number"),
        ({"min_per_second": -1}, "min_per_second: must be a finite number in [0.0, inf), got -1"),
        ({"window": 0}, "window: must be a positive"),
        ({"window": 86_401}, "window: must be at most one day"),
        ({"name": ""}, "name: expected a non-empty str"),
        ({"name": "a\x00b"}, "name: expected a non-empty str"),
        ({"prefix": ""}, "prefix: expected a non-empty str"),
        ({"client": None}, "client: expected a redis.Redis or redis.asyncio.Redis"),
    ],
)
def test_bad_arguments(client: redis.Redis, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"client": client, "name": "x", **kwargs}
    with pytest.raises(ConfigurationError) as info:
        RetryBudget(**args)
    assert str(info.value).startswith(message)


def test_bad_cost(client: redis.Redis) -> None:
    budget = RetryBudget(client, "x")
    bads: tuple[Any, ...] = (0, -1, 1.5, True)
    for bad in bads:
        with pytest.raises(ConfigurationError, match=r"^cost: "):
            budget.record_call(cost=bad)
        with pytest.raises(ConfigurationError, match=r"^cost: "):
            budget.try_spend(cost=bad)
