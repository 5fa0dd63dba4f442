"""RetryPolicy: when to retry a failed call, after how long, and when to give up (dead-letter).

The defaults follow the seed's guidance, "exponential backoff (base 100 ms, max 30 s)",
with full jitter rather than its ±10 %: full jitter spreads a crowd of failing clients
over the whole interval, which is what keeps them from failing together again.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..errors import ConfigurationError
from .checks import count, number, seconds_ms
from .conditions import Condition, ConditionLike, as_condition, on, status_of
from .decision import Decision
from .jitter import JITTERS, Uniform, draw
from .known import PERMANENT, TRANSIENT
from .retry_after import retry_after_of

#: The default ``retry_on``: every ``Exception`` (what is permanent is left out first).
ANY_EXCEPTION = on(Exception)


@dataclass(frozen=True, init=False)
class RetryPolicy:
    """Exponential backoff with jitter, a cap, ``Retry-After``, and which errors to retry.

    Retry ``n`` (0 for the first retry, after attempt 1 failed) waits up to
    ``min(cap, base * multiplier**n)``, spread by ``jitter`` (see :mod:`.jitter`). An
    error that says how long to wait (``exc.retry_after``, a ``Retry-After`` header) is
    obeyed instead, even above ``cap``; above ``max_retry_after`` the policy gives up.

    An error is retried when it matches ``retry_on`` and not ``dont_retry_on``; by default
    that is every ``Exception`` except :data:`~.known.PERMANENT` (bugs, our own
    configuration and serialization errors, HTTP 400/401/403/404/405/410/422).
    Errors that are not ``Exception`` subclasses (``KeyboardInterrupt``, ``SystemExit``,
    ``asyncio.CancelledError``) are never retried.

    Durations are kept to the millisecond and read back in seconds. The policy is
    immutable and compares by value; :meth:`replace` makes a changed copy.

    Args:
        max_attempts: attempts in all, the first included (1 = never retry).
        base: ceiling of the first retry's delay, seconds or timedelta (default 100 ms).
        cap: longest computed delay (default 30 s); at least ``base``.
        multiplier: growth of the ceiling per retry, at least 1 (default 2).
        jitter: ``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``.
        retry_on: errors worth retrying: a condition, exception class(es) or predicate.
        dont_retry_on: errors never retried, checked first (default ``PERMANENT``; ``()``
            for none).
        breaker_on: errors that count as failures for a circuit breaker (default
            ``TRANSIENT``: a 4xx says nothing about the dependency's health).
        max_retry_after: longest server-requested wait obeyed (default 1 h).

    Raises:
        ConfigurationError: naming the first wrong parameter.
    """

    max_attempts: int
    base: float
    cap: float
    multiplier: float
    jitter: str
    retry_on: Condition = field(repr=False)
    dont_retry_on: Condition = field(repr=False)
    breaker_on: Condition = field(repr=False)
    max_retry_after: float

    def __init__(
        self,
        max_attempts: int = 5,
        base: float | timedelta = 0.1,
        cap: float | timedelta = 30.0,
        multiplier: float = 2.0,
        jitter: str = "full",
        retry_on: ConditionLike | None = None,
        dont_retry_on: ConditionLike | None = None,
        breaker_on: ConditionLike | None = None,
        max_retry_after: float | timedelta = 3600.0,
    ) -> None:
        base_ms, cap_ms = seconds_ms("base", base), seconds_ms("cap", cap)
        if cap_ms < base_ms:
            raise ConfigurationError("cap", f"must be at least base ({base_ms / 1000}s), got {cap!r}")
        if jitter not in JITTERS:
            raise ConfigurationError("jitter", f"expected one of {', '.join(map(repr, JITTERS))}, got {jitter!r}")
        values: dict[str, Any] = {
            "max_attempts": count("max_attempts", max_attempts, 1),
            "base": base_ms / 1000,
            "cap": cap_ms / 1000,
            "multiplier": number("multiplier", multiplier, 1.0),
            "jitter": jitter,
            "retry_on": ANY_EXCEPTION if retry_on is None else as_condition(retry_on, "retry_on"),
            "dont_retry_on": PERMANENT if dont_retry_on is None else as_condition(dont_retry_on, "dont_retry_on"),
            "breaker_on": TRANSIENT if breaker_on is None else as_condition(breaker_on, "breaker_on"),
            "max_retry_after": seconds_ms("max_retry_after", max_retry_after) / 1000,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some parameters changed (the constructor's names).

        Raises:
            ConfigurationError: as the constructor does.
        """
        return dataclasses.replace(self, **changes)

    def retry_after(self, exc: BaseException) -> float | None:
        """Seconds ``exc`` asks us to wait (``exc.retry_after`` or a ``Retry-After`` header), or ``None``.

        See :func:`~.retry_after.retry_after_of` for where it is read from.
        """
        return retry_after_of(exc)

    def delay(
        self,
        retry_number: int,
        exc: BaseException | None = None,
        previous: float | None = None,
        rng: Uniform | None = None,
    ) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry).

        Args:
            retry_number: 0 before the first retry, 1 before the second, ...
            exc: the error; when it says how long to wait, that wait is the delay, whatever
                ``cap`` (:meth:`classify` gives up on one above ``max_retry_after``).
            previous: the delay before the previous retry (``"decorrelated"`` jitter).
            rng: source of randomness (default the ``random`` module).

        Returns:
            Seconds, zero or more.

        Raises:
            ConfigurationError: for a ``retry_number`` that is not an int of at least 0.
        """
        n = count("retry_number", retry_number, 0)
        if exc is not None:
            wait = self.retry_after(exc)
            if wait is not None:
                return wait
        return draw(self.jitter, n, self.base, self.cap, self.multiplier, previous, rng or random)

    def classify(
        self, exc: BaseException, attempt: int, previous: float | None = None, rng: Uniform | None = None
    ) -> Decision:
        """Decide what to do after attempt number ``attempt`` failed with ``exc``.

        In order: not an ``Exception`` -> dead-letter ``"not_retryable"``;
        ``dont_retry_on`` -> ``"permanent"``; not ``retry_on`` -> ``"not_retryable"``;
        ``attempt`` at ``max_attempts`` -> ``"exhausted"``; a requested wait beyond
        ``max_retry_after`` -> ``"exhausted"``; otherwise retry after :meth:`delay`.

        Args:
            exc: the error the attempt raised.
            attempt: the attempt that failed, 1 for the first execution.
            previous: the delay before that attempt, if it was a retry (decorrelated jitter).
            rng: source of randomness (default the ``random`` module).

        Returns:
            The decision.

        Raises:
            ConfigurationError: for an ``attempt`` that is not an int of at least 1.
        """
        attempt = count("attempt", attempt, 1)
        status = status_of(exc)
        kind = type(exc).__name__ + (f" (HTTP {status})" if status is not None else "")
        if not isinstance(exc, Exception):
            return Decision("dead_letter", "not_retryable", None, f"{kind} is not an Exception; never retried")
        if self.dont_retry_on(exc):
            return Decision("dead_letter", "permanent", None, f"{kind} is permanent: retrying cannot help")
        if not self.retry_on(exc):
            return Decision("dead_letter", "not_retryable", None, f"{kind} does not match retry_on")
        if attempt >= self.max_attempts:
            return Decision("dead_letter", "exhausted", None, f"{kind} on attempt {attempt} of {self.max_attempts}")
        wait = self.retry_after(exc)
        if wait is not None and wait > self.max_retry_after:
            detail = f"{kind} asks for a wait of {wait:g}s, beyond max_retry_after ({self.max_retry_after:g}s)"
            return Decision("dead_letter", "exhausted", None, detail)
        delay = wait if wait is not None else self.delay(attempt - 1, None, previous, rng)
        return Decision("retry", "retryable", delay, f"{kind} on attempt {attempt} of {self.max_attempts}")

    def counts_for_breaker(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure of the dependency a circuit breaker should count.

        By default only :data:`~.known.TRANSIENT` errors count: a 401 or a ``TypeError``
        says something about the request or the code, not about the dependency's health.
        """
        return isinstance(exc, Exception) and self.breaker_on(exc)
