"""Rate limits shared through Redis: the quick start, a denied request's headers, tiers.

From the repository root::

    python -m examples.ratelimit

Needs a Redis on localhost (``RATELIMIT_REDIS_URL``, default ``redis://127.0.0.1:6379/0``;
every key of the run carries a prefix unique to it and expires within a minute).

1. The seed's quick start, with ``redis.asyncio``: a token bucket of 100 requests
   refilled at 10 per second; a user sending 120 requests at once gets 100 through.
2. The same user's next request is denied: the 429 response's headers tell the client
   when to come back (``Retry-After``) and how much is left (``RateLimit-*``).
3. Plans: ``Tiers({"free": "10/m", "pro": "1000/m"})`` picks each call's limit; a free
   user and a pro user send 15 requests each.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import redis
import redis.asyncio

from celery_reliable.ratelimit import Tiers, TokenBucketLimiter, parse_limit

URL = os.environ.get("RATELIMIT_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"ratelimit-example-{uuid.uuid4().hex[:8]}"


async def quick_start(user_id: int) -> None:
    redis_client = redis.asyncio.Redis.from_url(URL)
    handled = 0

    async def handle_request() -> None:
        nonlocal handled
        handled += 1

    # The seed's quick start, as written (plus a prefix, to keep this run's keys apart).
    limiter = TokenBucketLimiter(redis_client, capacity=100, refill_rate=10, prefix=PREFIX)
    for _ in range(120):
        if await limiter.is_allowed(f"user:{user_id}"):
            await handle_request()
    print(f"1. user {user_id} sent 120 requests at once; {handled} went through (capacity 100)")

    print("2. the next request is denied; the 429 response carries:")
    decision = await limiter.is_allowed(f"user:{user_id}")
    print(f"    {decision.allowed=}, {decision.retry_after=:.3f}s, {decision.reset_after=:.1f}s")
    for name, value in decision.headers().items():
        print(f"    {name}: {value}")
    await redis_client.aclose()


def tiers() -> None:
    client = redis.Redis.from_url(URL)
    plans = Tiers({"free": "10/m", "pro": "1000/m"}, default="free")
    limiter = plans.limiter(client, "sliding_window", name="api", prefix=PREFIX)
    print(f"3. {plans}, sliding window:")
    for user, plan in [("alice", "free"), ("bob", "pro")]:
        decisions = [limiter.is_allowed(f"user:{user}", tier=plan) for _ in range(15)]
        last = decisions[-1].headers()
        retry = last.get("Retry-After", "-")
        print(
            f"    {user} ({plan}, {plans[plan]}): {sum(map(bool, decisions))} of 15 allowed; "
            f"last response: RateLimit-Remaining {last['RateLimit-Remaining']}, Retry-After {retry}"
        )
    # Any limit string builds any algorithm; a burst above the rate suits GCRA and token buckets.
    gcra = parse_limit("5/s burst 10").limiter(client, "gcra", name="burst", prefix=PREFIX)
    allowed = sum(bool(gcra.is_allowed("device:1")) for _ in range(20))
    print(f"    '5/s burst 10' with GCRA: {allowed} of 20 requests at once allowed, then one every 200 ms")
    client.close()


if __name__ == "__main__":
    asyncio.run(quick_start(user_id=42))
    tiers()
