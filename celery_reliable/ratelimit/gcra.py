"""GCRALimiter: the generic cell rate algorithm, a leaky bucket as a meter, in one key."""

from __future__ import annotations

from datetime import timedelta

from ..errors import ConfigurationError
from .base import C, RateLimiter, check_count, period_us


class GCRALimiter(RateLimiter[C]):
    """``rate`` requests per ``period``, at most ``burst`` at once, with one key per limited thing.

    GCRA stores only the theoretical arrival time (TAT) of the next request: each admitted
    request pushes it ``period / rate`` further, and a request is admitted if it arrives no
    earlier than ``TAT - (burst - 1) * period / rate``. It behaves like a token bucket of
    ``burst`` tokens refilled at ``rate / period``, in constant memory and O(1), and it
    spaces requests evenly. In any window of one ``period`` it admits at most
    ``rate + burst - 1`` requests: with ``burst=1``, never more than ``rate``.

    The interval between requests is kept in whole microseconds, rounded up, so the rate is
    never exceeded (a rate of 3 per second runs at 2.999994); rates above a million per
    period-second are refused.

    Args:
        client: ``redis.Redis``, or ``redis.asyncio.Redis`` (then ``is_allowed`` returns a
            coroutine).
        rate: requests per ``period``, an int of at least 1.
        period: seconds (or a timedelta) the ``rate`` is counted over.
        burst: requests admitted at once from idle, an int of at least 1; defaults to ``rate``.
        name: namespace of the state; defaults to one derived from the parameters.
        prefix: first part of the Redis keys (default ``"reliable"``).

    Raises:
        ConfigurationError: for a wrong client, rate, period, burst, name or prefix.
    """

    script = "ratelimit_gcra"

    def __init__(
        self,
        client: C,
        rate: int,
        period: float | timedelta = 1.0,
        burst: int | None = None,
        *,
        name: str | None = None,
        prefix: str = "reliable",
    ) -> None:
        self.rate = check_count("rate", rate)
        self.period_us = period_us("period", period)
        self.burst = check_count("burst", rate if burst is None else burst)
        if self.rate > self.period_us:
            raise ConfigurationError("rate", f"{rate} per {self.period_us} µs is above one request per microsecond")
        #: Microseconds between requests at the sustained rate (rounded up).
        self.interval_us = -(-self.period_us // self.rate)
        if self.interval_us * self.burst > 2**52:
            raise ConfigurationError("burst", f"{self.burst} requests of {self.interval_us} µs each exceed 140 years")
        default = f"gcra:{self.rate}:{self.period_us}:{self.burst}"
        super().__init__(client, default if name is None else name, prefix, self.burst)

    def __repr__(self) -> str:
        return f"GCRALimiter(rate={self.rate}, period={self.period_us / 1e6}, burst={self.burst}, name={self.name!r})"

    def _args(self, cost: int) -> list[int | str]:
        return [self.interval_us, self.burst, cost]
