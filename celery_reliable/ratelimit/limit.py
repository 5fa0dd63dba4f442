"""Limits as people write them: ``"100/s"``, ``"10/5s"``, ``"100/s burst 200"``.

A limit reads ``<count>/<period>``: ``count`` a whole number of requests, ``period`` a unit
(``s``, ``m``, ``h``, ``d``, or their words: ``second``, ``minute``, ``hour``, ``day``, in
the singular or plural) with an optional multiple (``10/5s``, ``300/15m``, ``1/0.5s``).
``per`` may replace the slash (``"10 per minute"``). An optional ``burst <n>`` sets how many
requests may pass at once (``"100/s burst 200"``); it defaults to the count. Case and
spaces around the parts do not matter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from ..errors import BadLimit, ConfigurationError
from .base import MAX_PERIOD_US, C, RateLimiter

#: Algorithms a :class:`Limit` can build.
Algorithm = Literal["gcra", "token_bucket", "sliding_window", "sliding_window_counter"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WORDS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hr": "h", "hour": "h", "day": "d"}
_LIMIT = re.compile(
    r"^\s*(?P<count>\d+)\s*(?:/|\bper\b)\s*(?P<multiple>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)"
    r"(?:\s+burst\s+(?P<burst>\d+))?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per ``period_s`` seconds, ``burst`` of them at once.

    Attributes:
        rate: requests per period, an int of at least 1.
        period_s: the period in seconds (a microsecond to a year).
        burst: requests that may pass at once (GCRA and token bucket); defaults to ``rate``.

    Raises:
        BadLimit: for numbers out of range.
    """

    rate: int
    period_s: float
    burst: int | None = None

    def __post_init__(self) -> None:
        numbers = (self.rate, self.period_s, self.burst)
        if not isinstance(self.rate, int) or isinstance(self.rate, bool) or self.rate < 1:
            raise BadLimit(numbers, "the rate must be an int of at least 1")
        if isinstance(self.period_s, bool) or not isinstance(self.period_s, (int, float)):
            raise BadLimit(numbers, "the period must be a number of seconds")
        if not math.isfinite(self.period_s) or not 1 <= round(self.period_s * 1_000_000) <= MAX_PERIOD_US:
            raise BadLimit(numbers, "the period must be between one microsecond and one year")
        burst = self.rate if self.burst is None else self.burst
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise BadLimit(numbers, "the burst must be an int of at least 1")
        object.__setattr__(self, "period_s", float(self.period_s))
        object.__setattr__(self, "burst", burst)

    def __str__(self) -> str:
        text = f"{self.rate}/{_period_text(self.period_s)}"
        return text if self.burst == self.rate else f"{text} burst {self.burst}"

    @property
    def per_second(self) -> float:
        """The sustained rate in requests per second."""
        return self.rate / self.period_s

    def limiter(
        self, client: C, algorithm: Algorithm = "gcra", *, name: str | None = None, prefix: str = "reliable"
    ) -> RateLimiter[C]:
        """Build a limiter that enforces this limit.

        Args:
            client: ``redis.Redis`` or ``redis.asyncio.Redis``.
            algorithm: ``"gcra"`` (default: one key, O(1), evenly spaced, ``burst`` at once),
                ``"token_bucket"`` (``burst`` tokens refilled at ``rate / period``),
                ``"sliding_window"`` (exact: never more than ``rate`` in any period) or
                ``"sliding_window_counter"`` (approximate, constant memory).
            name: namespace of the limiter's state (see the limiters).
            prefix: first part of the Redis keys.

        Returns:
            A :class:`~.gcra.GCRALimiter`, :class:`~.token_bucket.TokenBucketLimiter` or
            :class:`~.sliding_window.SlidingWindowLimiter`.

        Raises:
            ConfigurationError: for an unknown algorithm, a sliding window asked for a burst
                other than the rate, or a rate the algorithm cannot keep.
        """
        from .gcra import GCRALimiter
        from .sliding_window import SlidingWindowLimiter
        from .token_bucket import TokenBucketLimiter

        burst = self.rate if self.burst is None else self.burst
        if algorithm == "gcra":
            return GCRALimiter(client, self.rate, self.period_s, burst, name=name, prefix=prefix)
        if algorithm == "token_bucket":
            return TokenBucketLimiter(client, burst, self.per_second, name=name, prefix=prefix)
        if algorithm in ("sliding_window", "sliding_window_counter"):
            if burst != self.rate:
                message = f"a sliding window admits {self.rate} at once by itself; {self} needs gcra or token_bucket"
                raise ConfigurationError("algorithm", message)
            exact = algorithm == "sliding_window"
            return SlidingWindowLimiter(client, self.rate, self.period_s, exact, name=name, prefix=prefix)
        known = "'gcra', 'token_bucket', 'sliding_window' or 'sliding_window_counter'"
        raise ConfigurationError("algorithm", f"expected {known}, got {algorithm!r}")


def parse_limit(text: str | Limit) -> Limit:
    """Read a limit such as ``"100/s"``, ``"10/m"``, ``"1000/h"``, ``"5000/d"``, ``"10/5s"``, ``"100/s burst 200"``.

    Args:
        text: the limit (see the module docstring); a :class:`Limit` is returned as it is.

    Returns:
        The :class:`Limit`.

    Raises:
        BadLimit: for anything else; the message shows the accepted forms.
    """
    if isinstance(text, Limit):
        return text
    if not isinstance(text, str):
        raise BadLimit(text, f"expected a str, got {type(text).__name__}")
    found = _LIMIT.match(text)
    if found is None:
        raise BadLimit(text, "cannot be read")
    word = found["unit"].lower()
    word = word[:-1] if word.endswith("s") and len(word) > 2 else word
    unit = _UNITS.get(_WORDS.get(word, word))
    if unit is None:
        raise BadLimit(text, f"unknown period unit {found['unit']!r}")
    multiple = float(found["multiple"]) if found["multiple"] else 1.0
    if multiple <= 0:
        raise BadLimit(text, "the period must be positive")
    burst = int(found["burst"]) if found["burst"] else None
    try:
        return Limit(int(found["count"]), multiple * unit, burst)
    except BadLimit as exc:
        raise BadLimit(text, exc.reason) from None


def _period_text(seconds: float) -> str:
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        multiple = seconds / size
        if multiple >= 1 and multiple == int(multiple):
            return unit if multiple == 1 else f"{int(multiple)}{unit}"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"
