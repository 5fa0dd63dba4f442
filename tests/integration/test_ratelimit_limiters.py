"""Each limiter against a real Redis (db 8): quotas, costs, retry times, keys, asyncio, round trips."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from celery_reliable.ratelimit import (
    GCRALimiter,
    RateLimiter,
    SlidingWindowLimiter,
    Tiers,
    TokenBucketLimiter,
)
from tests.harness import RedisServer

URL = "redis://127.0.0.1:6379/8"

#: Five requests at once, then five per ``period`` seconds, per algorithm.
LIMITERS: dict[str, Callable[..., RateLimiter[Any]]] = {
    "token_bucket": lambda c, period=1.0, **kw: TokenBucketLimiter(c, capacity=5, refill_rate=5 / period, **kw),
    "gcra": lambda c, period=1.0, **kw: GCRALimiter(c, rate=5, period=period, burst=5, **kw),
    "sliding_log": lambda c, period=1.0, **kw: SlidingWindowLimiter(c, limit=5, window=period, **kw),
    "sliding_counter": lambda c, period=1.0, **kw: SlidingWindowLimiter(c, limit=5, window=period, exact=False, **kw),
}
each_limiter = pytest.mark.parametrize("build", LIMITERS.values(), ids=LIMITERS.keys())
Build = Callable[..., RateLimiter[Any]]


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@each_limiter
def test_admits_the_limit_then_says_when_to_retry(client: redis.Redis, build: Build) -> None:
    limiter = build(client)
    decisions = [limiter.is_allowed("user:1") for _ in range(5)]
    assert all(decisions) and [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 and d.retry_after == 0 and 0 < d.reset_after <= 2.0 for d in decisions)
    denied = limiter.is_allowed("user:1")
    assert not denied and denied.remaining == 0 and 0.1 < denied.retry_after <= 1.2
    assert denied.headers()["Retry-After"] in ("1", "2") and denied.headers()["RateLimit-Remaining"] == "0"
    assert decisions[0].at <= decisions[-1].at <= denied.at  # the server's clock
    time.sleep(denied.retry_after * 0.5)
    assert not limiter.is_allowed("user:1"), "allowed before retry_after"
    time.sleep(denied.retry_after * 0.5 + 0.005)
    again = limiter.is_allowed("user:1")
    assert again, "retry_after was too long"
    time.sleep(again.reset_after + 0.005)
    assert limiter.is_allowed("user:1").remaining == 4, "not fully reset after reset_after"


@each_limiter
def test_cost_counts_several_requests(client: redis.Redis, build: Build) -> None:
    limiter = build(client)
    assert limiter.is_allowed("batch", cost=3).remaining == 2
    denied = limiter.is_allowed("batch", cost=3)
    assert not denied and denied.remaining == 2 and denied.retry_after > 0
    assert limiter.is_allowed("batch", cost=2).remaining == 0
    assert not limiter.is_allowed("batch")


@each_limiter
def test_one_keys_flood_leaves_other_keys_alone(client: redis.Redis, build: Build) -> None:
    limiter = build(client)
    flood = [limiter.is_allowed("user:flooder") for _ in range(200)]
    assert sum(map(bool, flood)) in (5, 6)  # a sixth may refill during the flood
    assert [bool(limiter.is_allowed("user:quiet")) for _ in range(6)] == [True] * 5 + [False]
    assert not build(client).is_allowed("user:quiet")  # the same parameters share the state of a key
    assert build(client, name="other-purpose").is_allowed("user:quiet")  # another name, another state


@each_limiter
def test_state_lives_in_one_hash_tagged_key_that_expires(client: redis.Redis, build: Build) -> None:
    limiter = build(client, period=0.2)
    limiter.is_allowed("user:{7}")  # braces would change the hash tag: hashed
    limiter.is_allowed("user:7")
    keys = sorted(k.decode() for k in client.keys("*") if isinstance(k, bytes))
    assert keys == sorted([limiter.key("user:{7}"), f"reliable:rl:{{{limiter.name}:user:7}}"])
    assert keys[0].startswith("reliable:rl:{#") or keys[1].startswith("reliable:rl:{#")
    assert all(0 < client.pttl(k) <= 402 for k in keys)
    time.sleep(0.45)
    assert client.keys("*") == []


def test_the_seed_quick_start_runs_as_written(client: redis.Redis) -> None:
    handled: list[int] = []

    async def handle_request(user_id: int) -> None:
        handled.append(user_id)

    async def main() -> None:
        redis_client = redis.asyncio.Redis.from_url(URL)
        limiter = TokenBucketLimiter(redis_client, capacity=100, refill_rate=10)
        for user_id in [1] * 120 + [2]:
            if await limiter.is_allowed(f"user:{user_id}"):
                await handle_request(user_id)
        await redis_client.aclose()

    asyncio.run(main())
    assert handled.count(1) in (100, 101) and handled.count(2) == 1  # one may refill in the meantime
    sync = TokenBucketLimiter(client, capacity=100, refill_rate=10)
    if sync.is_allowed("user:2"):
        handled.append(2)
    assert handled.count(2) == 2


@each_limiter
def test_asyncio_decisions_are_the_same_and_atomic(client: redis.Redis, build: Build) -> None:
    async def main() -> tuple[list[Any], Any]:
        aclient = redis.asyncio.Redis.from_url(URL)
        limiter = build(aclient)
        decisions = await asyncio.gather(*(limiter.is_allowed("user:a") for _ in range(40)))
        other = await limiter.is_allowed("user:b", cost=2)
        await aclient.aclose()
        return decisions, other

    decisions, other = asyncio.run(main())
    assert sum(map(bool, decisions)) in (5, 6) and sorted(d.remaining for d in decisions if d)[-5:] == [0, 1, 2, 3, 4]
    assert other and other.remaining == 3
    assert not build(client).is_allowed("user:a")  # sync and asyncio share the state


class CountingConnection(redis.Connection):
    """Counts the requests written to the socket."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


class AsyncCountingConnection(redis.asyncio.Connection):
    """Counts the requests written to the socket (asyncio)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        AsyncCountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def test_one_round_trip_per_decision(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # private: its command statistics are ours alone
    try:
        admin = redis.Redis(port=server.port)
        sync = redis.Redis(connection_pool=redis.ConnectionPool(port=server.port, connection_class=CountingConnection))
        limiters = [build(sync) for build in LIMITERS.values()]
        for limiter in limiters:
            limiter.is_allowed("warm")  # the first call may load the script (NOSCRIPT, SCRIPT LOAD)
        admin.config_resetstat()
        CountingConnection.sent = 0
        decisions = [limiter.is_allowed(f"user:{i % 3}") for i in range(30) for limiter in limiters]
        assert any(decisions) and not all(decisions)  # allowed and denied alike
        assert CountingConnection.sent == 120
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 120
        # Nothing else came from outside a script: no EVAL with the text, no SCRIPT LOAD, no MULTI.
        assert not {"cmdstat_eval", "cmdstat_script|load", "cmdstat_multi", "cmdstat_exec"} & set(stats)

        async def main() -> None:
            pool = redis.asyncio.ConnectionPool(port=server.port, connection_class=AsyncCountingConnection)
            aclient = redis.asyncio.Redis(connection_pool=pool)
            alimiters = [build(aclient) for build in LIMITERS.values()]
            for limiter in alimiters:
                await limiter.is_allowed("warm")
            AsyncCountingConnection.sent = 0
            for i in range(10):
                for limiter in alimiters:
                    await limiter.is_allowed(f"user:{i % 3}")
            assert AsyncCountingConnection.sent == 40
            await aclient.aclose()

        asyncio.run(main())
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 120 + 4 + 40
        sync.close()
        admin.close()
    finally:
        server.stop()


def test_tiers_apply_each_calls_limit(client: redis.Redis) -> None:
    tiers = Tiers({"free": "3/m", "pro": "10/m"}, default="free")
    for algorithm in ("gcra", "token_bucket", "sliding_window", "sliding_window_counter"):
        limiter = tiers.limiter(client, algorithm, name=f"api-{algorithm}")
        free = [limiter.is_allowed("user:1") for _ in range(4)]
        assert [bool(d) for d in free] == [True] * 3 + [False] and free[0].limit == 3
        pro = [limiter.is_allowed("user:1", tier="pro", cost=2) for _ in range(6)]
        assert [bool(d) for d in pro] == [True] * 5 + [False] and pro[0].limit == 10
        assert pro[0].headers()["RateLimit-Remaining"] == "8"
