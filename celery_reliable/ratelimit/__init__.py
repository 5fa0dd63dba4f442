"""Rate limits shared by every process through Redis, decided on the server's clock.

- :class:`TokenBucketLimiter`: ``capacity`` tokens refilled at ``refill_rate`` per second;
- :class:`SlidingWindowLimiter`: at most ``limit`` in any ``window``, exact (a log of
  admitted requests) or approximate (two weighted counters, constant memory);
- :class:`GCRALimiter`: ``rate`` per ``period`` spaced evenly, ``burst`` at once, one key;
- :func:`parse_limit` reads ``"100/s"``, ``"10/5s"``, ``"100/s burst 200"`` into a
  :class:`Limit`, which builds any of them; :class:`Tiers` picks a limit per plan.

Every decision is one Lua script (``lua/ratelimit_*.lua``), atomic and in one round trip,
on the Redis server's clock, so clients with wrong clocks agree. State lives at
``<prefix>:rl:{<name>:<key>}`` (a Redis Cluster hash tag per key) and expires when idle.
``is_allowed(key, cost=1)`` returns a :class:`Decision` (truthy when allowed, with HTTP
headers) with ``redis.Redis``, and a coroutine to await with ``redis.asyncio.Redis``::

    limiter = TokenBucketLimiter(redis_client, capacity=100, refill_rate=10)
    if await limiter.is_allowed(f"user:{user_id}"):
        await handle_request()

Internally, times are integer microseconds (the resolution of Redis ``TIME``), so rates of
thousands per second per key keep their precision.
"""

from __future__ import annotations

from .base import RateLimiter
from .decision import Decision
from .gcra import GCRALimiter
from .limit import Algorithm, Limit, parse_limit
from .sliding_window import SlidingWindowLimiter
from .tiers import TieredLimiter, Tiers
from .token_bucket import TokenBucketLimiter

__all__ = [
    "Algorithm",
    "Decision",
    "GCRALimiter",
    "Limit",
    "RateLimiter",
    "SlidingWindowLimiter",
    "TieredLimiter",
    "Tiers",
    "TokenBucketLimiter",
    "parse_limit",
]
