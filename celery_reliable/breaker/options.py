"""BreakerOptions: a circuit breaker's thresholds, windows and timeouts, checked once.

Durations arrive as seconds (int or float) or a ``timedelta`` and are kept in whole
milliseconds; rates are fractions in (0, 1] (``0.5`` for 50 %), kept in parts per
million for the Lua scripts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ..config import as_seconds
from ..errors import ConfigurationError
from ..retries.conditions import NOTHING, Condition, ConditionLike, as_condition
from ..retries.known import PERMANENT, TRANSIENT
from ..retries.policy import RetryPolicy

#: Errors that count as failures by default: those of the network or an overloaded
#: service (TRANSIENT), and everything that is not the caller's own fault (PERMANENT: a
#: ``TypeError``, an HTTP 401 or 404 says nothing about the dependency's health).
DEFAULT_COUNT_ON: Condition = TRANSIENT | ~PERMANENT
#: Most calls a count-based window holds.
MAX_WINDOW_CALLS = 100_000
#: Shortest and longest time-based window, in ms.
MIN_WINDOW_MS, MAX_WINDOW_MS = 10, 86_400_000
#: Longest recovery timeout, probe lease or slow-call threshold (one day), in ms.
MAX_DURATION_MS = 86_400_000
#: Least time the keys of a breaker live after a write (one day), in ms.
MIN_TTL_MS = 86_400_000

WindowType = Literal["count", "time"]
Outcome = Literal["success", "failure", "ignored"]

_UNSET: Any = object()


def _ms(name: str, value: object, least_ms: int = 1, most_ms: int = MAX_DURATION_MS) -> int:
    seconds = as_seconds(name, value)
    ms = round(seconds * 1000) if math.isfinite(seconds) else -1
    if not least_ms <= ms <= most_ms:
        raise ConfigurationError(name, f"must be between {least_ms / 1000:g}s and {most_ms / 1000:g}s, got {value!r}")
    return ms


def _int(name: str, value: object, least: int, most: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(name, f"expected an int, got {type(value).__name__} {value!r}")
    if value < least or (most is not None and value > most):
        bound = f"between {least} and {most}" if most is not None else f"at least {least}"
        raise ConfigurationError(name, f"must be {bound}, got {value}")
    return value


def _rate(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigurationError(name, f"expected a fraction in (0, 1], got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0 < value <= 1):
        hint = " (a fraction: 0.5 for 50%)" if isinstance(value, (int, float)) and 1 < value <= 100 else ""
        raise ConfigurationError(name, f"must be a fraction in (0, 1]{hint}, got {value!r}")
    return float(value)


def _condition(name: str, value: object, default: Condition) -> Condition:
    if value is None:
        return default
    if isinstance(value, RetryPolicy) and name == "count_on":
        return value.breaker_on
    return as_condition(value, name)


@dataclass(frozen=True, init=False)
class BreakerOptions:
    """When a breaker opens, how long it stays open, and how it probes before closing.

    The breaker opens when any enabled rule holds:

    - **failure rate**: at least ``failure_rate_threshold`` of the calls in the window
      failed, once the window holds ``minimum_calls``;
    - **slow-call rate**: at least ``slow_call_rate_threshold`` of them took longer than
      ``slow_call_threshold`` (only with a ``slow_call_threshold``);
    - **consecutive failures**: ``failure_threshold`` failures in a row.

    Args:
        failure_rate_threshold: fraction in (0, 1] of failed calls that opens the breaker;
            default 0.5, or off when ``failure_threshold`` is given alone; ``None`` for off.
        window: a count window's size in calls (default 10), or a time window's length in
            seconds or as a ``timedelta`` (kept in 10 to 60 buckets, about one per second:
            a call counts for between ``1 - 1/buckets`` and one whole window).
        window_type: ``"count"`` (the last ``window`` calls) or ``"time"`` (the calls of
            the last ``window`` seconds); default ``"time"`` for a ``timedelta``, else
            ``"count"``.
        minimum_calls: calls the window must hold before a rate can open the breaker;
            default 10 (at most the size of a count window).
        failure_threshold: consecutive failures that open the breaker, or ``None``.
        recovery_timeout: seconds the breaker stays OPEN before letting probes through.
        half_open_max_calls: probes let through in one HALF_OPEN, fleet-wide (as
            resilience4j's ``permittedNumberOfCallsInHalfOpenState``). A probe that
            succeeds keeps its slot; one whose error is ignored, or whose lease ends
            before it reports, gives it back.
        success_threshold: successful probes that close the breaker, at most
            ``half_open_max_calls`` (the default); any failed probe opens it again.
        slow_call_threshold: seconds above which a call is slow, or ``None``; a slow probe
            counts as a failed one.
        slow_call_rate_threshold: fraction in (0, 1] of slow calls that opens the breaker.
        count_on: errors that count as failures (a condition, exception classes, a
            predicate, or a :class:`~celery_reliable.retries.RetryPolicy`, whose
            ``breaker_on`` is used); default :data:`DEFAULT_COUNT_ON`. Other errors count
            as successes: the dependency answered.
        ignore_on: errors that count neither way (checked first; default none). Errors
            that are not ``Exception`` (cancellation, ``KeyboardInterrupt``) are ignored.
        probe_lease: seconds a probe permit lasts if its call never reports (its process
            died), so HALF_OPEN cannot wedge; default 60.
        on_redis_error: ``"allow"`` (default: calls go through, a warning is logged) or
            ``"deny"`` (admission raises :class:`~celery_reliable.errors.BackendUnavailable`).

    Raises:
        ConfigurationError: naming the first wrong parameter.
    """

    failure_rate_threshold: float | None
    window_type: WindowType
    window_calls: int
    window_ms: int
    minimum_calls: int
    failure_threshold: int | None
    recovery_timeout_ms: int
    half_open_max_calls: int
    success_threshold: int
    slow_call_threshold_ms: int | None
    slow_call_rate_threshold: float
    count_on: Condition = field(repr=False)
    ignore_on: Condition = field(repr=False)
    probe_lease_ms: int
    on_redis_error: Literal["allow", "deny"]

    def __init__(
        self,
        *,
        failure_rate_threshold: float | None = _UNSET,
        window: int | float | timedelta = 10,
        window_type: WindowType | None = None,
        minimum_calls: int | None = None,
        failure_threshold: int | None = None,
        recovery_timeout: float | timedelta = 30,
        half_open_max_calls: int = 1,
        success_threshold: int | None = None,
        slow_call_threshold: float | timedelta | None = None,
        slow_call_rate_threshold: float = 1.0,
        count_on: ConditionLike | RetryPolicy | None = None,
        ignore_on: ConditionLike | None = None,
        probe_lease: float | timedelta = 60,
        on_redis_error: Literal["allow", "deny"] = "allow",
    ) -> None:
        values: dict[str, Any] = {}
        if window_type is None:
            window_type = "time" if isinstance(window, timedelta) else "count"
        if window_type == "count":
            if isinstance(window, timedelta):
                raise ConfigurationError("window", "a count window takes a number of calls, not a timedelta")
            values["window_calls"] = _int("window", window, 1, MAX_WINDOW_CALLS)
            values["window_ms"] = 0
        elif window_type == "time":
            values["window_calls"] = 0
            values["window_ms"] = _ms("window", window, MIN_WINDOW_MS, MAX_WINDOW_MS)
        else:
            raise ConfigurationError("window_type", f"expected 'count' or 'time', got {window_type!r}")
        values["window_type"] = window_type
        if failure_threshold is not None:
            failure_threshold = _int("failure_threshold", failure_threshold, 1, MAX_WINDOW_CALLS)
        if failure_rate_threshold is _UNSET:
            failure_rate_threshold = 0.5 if failure_threshold is None else None
        if failure_rate_threshold is not None:
            failure_rate_threshold = _rate("failure_rate_threshold", failure_rate_threshold)
        slow_ms = None if slow_call_threshold is None else _ms("slow_call_threshold", slow_call_threshold)
        if failure_rate_threshold is None and failure_threshold is None and slow_ms is None:
            raise ConfigurationError(
                "failure_rate_threshold",
                "nothing could open this breaker: give failure_rate_threshold, failure_threshold "
                "or slow_call_threshold",
            )
        if minimum_calls is None:
            minimum_calls = min(10, values["window_calls"]) if window_type == "count" else 10
        else:
            most = values["window_calls"] if window_type == "count" else None
            minimum_calls = _int("minimum_calls", minimum_calls, 1, most)
        half_open = _int("half_open_max_calls", half_open_max_calls, 1, 1000)
        values.update(
            failure_rate_threshold=failure_rate_threshold,
            minimum_calls=minimum_calls,
            failure_threshold=failure_threshold,
            recovery_timeout_ms=_ms("recovery_timeout", recovery_timeout),
            half_open_max_calls=half_open,
            success_threshold=half_open
            if success_threshold is None
            else _int("success_threshold", success_threshold, 1, half_open),
            slow_call_threshold_ms=slow_ms,
            slow_call_rate_threshold=_rate("slow_call_rate_threshold", slow_call_rate_threshold),
            count_on=_condition("count_on", count_on, DEFAULT_COUNT_ON),
            ignore_on=_condition("ignore_on", ignore_on, NOTHING),
            probe_lease_ms=_ms("probe_lease", probe_lease),
        )
        if on_redis_error not in ("allow", "deny"):
            raise ConfigurationError("on_redis_error", f"expected 'allow' or 'deny', got {on_redis_error!r}")
        values["on_redis_error"] = on_redis_error
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def uses_window(self) -> bool:
        """Whether a rate rule is on, so outcomes must be kept in a window."""
        return self.failure_rate_threshold is not None or self.slow_call_threshold_ms is not None

    @property
    def buckets(self) -> int:
        """Buckets of a time window: one per second, between 10 and 60 of them."""
        return max(10, min(60, self.window_ms // 1000))

    @property
    def bucket_ms(self) -> int:
        """Length of one bucket of a time window (the window is rounded up to whole buckets)."""
        return -(-self.window_ms // self.buckets)

    @property
    def ttl_ms(self) -> int:
        """How long the breaker's keys live after a write: long enough never to forget OPEN."""
        return max(MIN_TTL_MS, 2 * (self.recovery_timeout_ms + self.probe_lease_ms) + self.window_ms)

    def outcome_of(self, exc: BaseException | None) -> Outcome:
        """How a call that raised ``exc`` (``None``: returned) counts.

        Returns:
            ``"ignored"`` for a non-``Exception`` or an ``ignore_on`` error; ``"failure"``
            for a ``count_on`` error; ``"success"`` otherwise (the dependency answered).
        """
        if exc is None:
            return "success"
        if not isinstance(exc, Exception) or self.ignore_on(exc):
            return "ignored"
        return "failure" if self.count_on(exc) else "success"

    def script_args(self) -> list[int | str]:
        """ARGV 6 to 15 of ``breaker_record.lua``: the rules, in the script's units."""
        kind = "n" if not self.uses_window else ("c" if self.window_type == "count" else "t")
        size = self.window_calls if self.window_type == "count" else self.buckets
        slow_rate = round(self.slow_call_rate_threshold * 1e6) if self.slow_call_threshold_ms else 0
        return [
            self.slow_call_threshold_ms or 0,
            kind,
            size,
            self.bucket_ms if self.window_type == "time" else 0,
            self.minimum_calls,
            round(self.failure_rate_threshold * 1e6) if self.failure_rate_threshold is not None else 0,
            slow_rate,
            self.failure_threshold or 0,
            self.recovery_timeout_ms,
            self.success_threshold,
        ]
