"""SlidingWindowLimiter: at most ``limit`` requests in any ``window``, exact or approximate."""

from __future__ import annotations

from datetime import timedelta

from .base import C, RateLimiter, check_count, period_us


class SlidingWindowLimiter(RateLimiter[C]):
    """At most ``limit`` requests in a window of ``window`` seconds that slides with time.

    ``exact=True`` (the default) keeps a log of the admitted requests' server times in a
    sorted set trimmed to the window, so no window of that length ever holds more than
    ``limit`` admissions: the choice for strict quotas. It costs memory in proportion to
    ``limit`` per key.

    ``exact=False`` keeps two counters per key (this fixed window's and the previous
    one's) and weights the previous count by how much of it the sliding window still
    covers: constant memory and time, for high volume. It never admits more than ``limit``
    in one fixed window and is close to exact for steady traffic; in the worst case a
    sliding window holds up to ``2 * limit``.

    Args:
        client: ``redis.Redis``, or ``redis.asyncio.Redis`` (then ``is_allowed`` returns a
            coroutine).
        limit: requests per window, an int of at least 1.
        window: seconds (or a timedelta), from a microsecond to a year.
        exact: the request log (``True``) or the weighted counters (``False``).
        name: namespace of the state; defaults to one derived from the parameters.
        prefix: first part of the Redis keys (default ``"reliable"``).

    Raises:
        ConfigurationError: for a wrong client, limit, window, name or prefix.
    """

    def __init__(
        self,
        client: C,
        limit: int,
        window: float | timedelta,
        exact: bool = True,
        *,
        name: str | None = None,
        prefix: str = "reliable",
    ) -> None:
        limit = check_count("limit", limit)
        self.window_us = period_us("window", window)
        self.exact = bool(exact)
        self.script = "ratelimit_sliding_log" if self.exact else "ratelimit_sliding_counter"
        default = f"{'sliding_log' if self.exact else 'sliding_counter'}:{limit}:{self.window_us}"
        super().__init__(client, default if name is None else name, prefix, limit)

    def __repr__(self) -> str:
        return (
            f"SlidingWindowLimiter(limit={self.limit}, window={self.window_us / 1e6}, exact={self.exact}, "
            f"name={self.name!r})"
        )

    def _args(self, cost: int) -> list[int | str]:
        return [self.window_us, self.limit, cost]
