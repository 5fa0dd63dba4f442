"""TokenBucketLimiter: a bucket of ``capacity`` tokens refilled at ``refill_rate`` per second."""

from __future__ import annotations

import math

from ..errors import ConfigurationError
from .base import C, RateLimiter, check_count

#: Longest time an empty bucket may take to fill (100 years), in seconds.
MAX_FILL_S = 100 * 365 * 86_400


class TokenBucketLimiter(RateLimiter[C]):
    """A token bucket in Redis, shared by every process that uses the same name and key.

    Each key's bucket starts full; a request takes ``cost`` tokens if the bucket holds them,
    and tokens flow back at ``refill_rate`` per second up to ``capacity``. So bursts of up
    to ``capacity`` pass at once, and over any stretch of ``t`` seconds at most
    ``capacity + refill_rate * t`` requests are admitted. Storage: one hash per key
    (tokens and the server time they were counted at), expiring once the bucket is full.

    Args:
        client: ``redis.Redis``, or ``redis.asyncio.Redis`` (then ``is_allowed`` returns a
            coroutine).
        capacity: tokens the bucket holds, an int of at least 1 (the largest burst).
        refill_rate: tokens added per second, a positive number (may be below 1; the bucket
            must fill within 100 years).
        name: namespace of the state; defaults to one derived from the parameters, so
            differently configured limiters never share a bucket. Name it (``"api"``) to
            say which limiters share state.
        prefix: first part of the Redis keys (default ``"reliable"``).

    Raises:
        ConfigurationError: for a wrong client, capacity, rate, name or prefix.

    Example::

        limiter = TokenBucketLimiter(redis_client, capacity=100, refill_rate=10)
        if await limiter.is_allowed(f"user:{user_id}"):  # redis.asyncio client
            ...
    """

    script = "ratelimit_token_bucket"

    def __init__(
        self,
        client: C,
        capacity: int,
        refill_rate: float,
        *,
        name: str | None = None,
        prefix: str = "reliable",
    ) -> None:
        capacity = check_count("capacity", capacity)
        if capacity > 2**50:
            raise ConfigurationError("capacity", f"must be at most 2**50 tokens, got {capacity}")
        if isinstance(refill_rate, bool) or not isinstance(refill_rate, (int, float)):
            raise ConfigurationError("refill_rate", f"expected tokens per second, got {refill_rate!r}")
        if not math.isfinite(refill_rate) or not 0 < refill_rate <= 1e9:
            raise ConfigurationError("refill_rate", f"must be in (0, 1e9] tokens per second, got {refill_rate}")
        if capacity / refill_rate > MAX_FILL_S:
            raise ConfigurationError("refill_rate", f"{refill_rate}/s takes over 100 years to fill {capacity} tokens")
        self.capacity = capacity
        self.refill_rate = float(refill_rate)
        default = f"token_bucket:{capacity}:{self.refill_rate!r}"
        super().__init__(client, default if name is None else name, prefix, capacity)

    def __repr__(self) -> str:
        return f"TokenBucketLimiter(capacity={self.capacity}, refill_rate={self.refill_rate}, name={self.name!r})"

    def _args(self, cost: int) -> list[int | str]:
        return [self.capacity, repr(self.refill_rate), cost]
