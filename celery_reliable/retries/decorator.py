"""``@retry``: a :class:`~.policy.RetryPolicy` around a plain or async function, outside Celery.

::

    @retry(max_attempts=3, base_delay=1.0)
    async def call_external_api(): ...

    @retry(policy=RetryPolicy(max_attempts=5, retry_on=(ConnectionError, TimeoutError)))
    def fetch(): ...

Put ``@retry`` *inside* a circuit breaker (below it in the decorator stack): a retry
then never hammers an open circuit, and the breaker sees one failure per call.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, cast, overload

from ..errors import ConfigurationError, UnknownOptionError
from .checks import seconds_ms
from .decision import Decision
from .jitter import Uniform
from .policy import RetryPolicy

F = TypeVar("F", bound=Callable[..., Any])

#: ``on_retry(exc, attempt, delay)``: the attempt that failed (1 for the first) and the
#: seconds about to be slept; may return an awaitable for an async function.
OnRetry = Callable[[BaseException, int, float], object]

_POLICY_OPTIONS = ("cap", "multiplier", "jitter", "retry_on", "dont_retry_on", "breaker_on", "max_retry_after")


def _build_policy(
    max_attempts: int | None, base_delay: float | timedelta | None, policy: RetryPolicy | None, options: dict[str, Any]
) -> RetryPolicy:
    for name in options:
        if name not in _POLICY_OPTIONS:
            close = difflib.get_close_matches(
                name, (*_POLICY_OPTIONS, "base_delay", "max_attempts", "policy"), n=1, cutoff=0.5
            )
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownOptionError(name, f"unknown retry option{hint}")
    if policy is not None:
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError("policy", f"expected a RetryPolicy, got {policy!r}")
        if max_attempts is not None or base_delay is not None or options:
            raise ConfigurationError("policy", "pass either policy= or the policy's options, not both")
        return policy
    base = 1.0 if base_delay is None else seconds_ms("base_delay", base_delay) / 1000
    options.setdefault("cap", max(30.0, base))  # a long base_delay raises the default cap with it
    return RetryPolicy(max_attempts=3 if max_attempts is None else max_attempts, base=base, **options)


def _give_up(exc: BaseException, attempt: int, decision: Decision) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        plural = "s" if attempt > 1 else ""
        exc.add_note(
            f"celery-reliable @retry: gave up after {attempt} attempt{plural} ({decision.reason}): {decision.detail}"
        )


async def _settle(value: object) -> None:
    if inspect.isawaitable(value):
        await value


@overload
def retry(max_attempts: F, /) -> F: ...


@overload
def retry(
    max_attempts: int | None = None,
    base_delay: float | timedelta | None = None,
    *,
    policy: RetryPolicy | None = None,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], object] | None = None,
    rng: Uniform | None = None,
    **policy_options: Any,
) -> Callable[[F], F]: ...


def retry(
    max_attempts: Any = None,
    base_delay: float | timedelta | None = None,
    *,
    policy: RetryPolicy | None = None,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], object] | None = None,
    rng: Uniform | None = None,
    **policy_options: Any,
) -> Any:
    """Retry a function (sync or async) on failure, as ``policy`` decides.

    When the policy gives up (a permanent error, or no attempt left), the last error is
    re-raised unchanged, with a note (Python 3.11+) saying after how many attempts and
    why. Errors that are not ``Exception`` subclasses (``KeyboardInterrupt``,
    ``asyncio.CancelledError``) pass through at once.

    Args:
        max_attempts: attempts in all, the first included (default 3). ``@retry`` with no
            parentheses uses every default.
        base_delay: ceiling of the first retry's delay in seconds (default 1.0); without
            ``cap``, the cap is the larger of 30 s and ``base_delay``.
        policy: a whole :class:`RetryPolicy` instead of ``max_attempts``, ``base_delay``
            and ``policy_options``.
        on_retry: called as ``on_retry(exc, attempt, delay)`` before each sleep.
        sleep: the sleep function (default ``time.sleep``, or ``asyncio.sleep`` for an
            async function; an awaitable it returns is awaited).
        rng: source of randomness for the jitter (default the ``random`` module).
        policy_options: more :class:`RetryPolicy` parameters (``cap``, ``jitter``,
            ``retry_on``, ``dont_retry_on``, ...).

    Returns:
        The decorated function, or a decorator.

    Raises:
        ConfigurationError: for a wrong option, or ``policy`` together with options.
        UnknownOptionError: for an option ``RetryPolicy`` does not take.
    """
    if callable(max_attempts) and not isinstance(max_attempts, int):
        return retry()(max_attempts)
    pol = _build_policy(max_attempts, base_delay, policy, policy_options)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                attempt = 0
                previous: float | None = None
                while True:
                    attempt += 1
                    try:
                        return await fn(*args, **kwargs)
                    except Exception as exc:
                        decision = pol.classify(exc, attempt, previous, rng)
                        if decision.delay is None:
                            _give_up(exc, attempt, decision)
                            raise
                        previous = decision.delay
                        if on_retry is not None:
                            await _settle(on_retry(exc, attempt, previous))
                        await _settle((sleep or asyncio.sleep)(previous))

            return cast(F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            attempt = 0
            previous: float | None = None
            while True:
                attempt += 1
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    decision = pol.classify(exc, attempt, previous, rng)
                    if decision.delay is None:
                        _give_up(exc, attempt, decision)
                        raise
                    previous = decision.delay
                    if on_retry is not None:
                        on_retry(exc, attempt, previous)
                    (sleep or time.sleep)(previous)

        return cast(F, run)

    return decorate
