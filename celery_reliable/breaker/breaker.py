"""CircuitBreaker: one breaker shared by every process through Redis, sync and asyncio.

Each call costs two round trips, one script each: ``allow()`` before (CLOSED: one
``HMGET``), ``record()`` after. Neither keeps per-call state on the breaker: ``with``
blocks keep their permit in a context variable, so one breaker object serves every
thread and asyncio task of a process.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from ..errors import BackendUnavailable, CircuitOpen, ConfigurationError
from ..ratelimit.base import check_text
from ..retries.conditions import ConditionLike
from ..retries.known import TRANSIENT
from ..retries.policy import RetryPolicy
from ..scripts import ScriptCall
from . import connection
from .options import _UNSET, BreakerOptions, Outcome, WindowType
from .signals import announce, logger
from .state import BreakerState, Permit, State, StateChange
from .store import ScriptArgs, breaker_keys, change_of_record, change_of_reset

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between two warnings about an unreachable Redis, per breaker and process.
WARN_EVERY = 10.0

#: Permits of the ``with`` blocks running in this context: (breaker id, permit, start).
_active: contextvars.ContextVar[tuple[tuple[int, Permit, float], ...]] = contextvars.ContextVar(
    "celery_reliable_breaker_permits", default=()
)


class CircuitBreaker:
    """A circuit breaker whose state lives in Redis, shared by every process using ``name``.

    CLOSED lets calls through and counts their outcomes; when a rule trips (failure rate,
    slow-call rate, consecutive failures: see :class:`~.options.BreakerOptions`) it is
    OPEN and refuses every call with :class:`~celery_reliable.errors.CircuitOpen` for
    ``recovery_timeout``; then HALF_OPEN hands out at most ``half_open_max_calls`` probe
    permits fleet-wide: a failed probe opens it again, ``success_threshold`` successful
    ones close it. Each transition is one atomic script, announced once, by the process
    that made it (:data:`~.signals.breaker_state_changed`, and a log line).

    Use it as ``with breaker:``, ``async with breaker:``, ``breaker.call(fn, ...)``,
    ``await breaker.acall(fn, ...)``, or as a decorator (``@breaker``). The plain methods
    need a ``redis.Redis``, the ``a*`` ones a ``redis.asyncio.Redis``; a breaker built
    without ``client=`` creates both kinds itself, per process, from ``url``.

    Args:
        name: what is protected (``"stripe"``); breakers with one name share one state.
        client: ``redis.Redis`` or ``redis.asyncio.Redis``; default: per-process clients
            for ``url``.
        url: the Redis to use without ``client`` (default ``$REDIS_URL``, else
            ``redis://localhost:6379/0``).
        prefix: first part of the Redis keys (default ``"reliable"``).
        clock: returns Unix seconds to decide at instead of the Redis server's clock; for
            tests and simulations only (every process must then share one clock).
        failure_rate_threshold, window, window_type, minimum_calls, failure_threshold,
            recovery_timeout, half_open_max_calls, success_threshold,
            slow_call_threshold, slow_call_rate_threshold, count_on, ignore_on,
            probe_lease, on_redis_error: see :class:`~.options.BreakerOptions`.

    Raises:
        ConfigurationError: for a wrong name, client or option.
    """

    def __init__(
        self,
        name: str,
        client: Any = None,
        *,
        url: str | None = None,
        prefix: str = "reliable",
        clock: Callable[[], float] | None = None,
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
        self.name = check_text("name", name)
        self.prefix = check_text("prefix", prefix)
        if client is not None and not hasattr(client, "register_script"):
            raise ConfigurationError("client", f"expected a redis.Redis or redis.asyncio.Redis, got {client!r}")
        if client is not None and url is not None:
            raise ConfigurationError("url", "pass either client= or url=, not both")
        if url is not None:
            check_text("url", url)
        if clock is not None and not callable(clock):
            raise ConfigurationError("clock", f"expected a callable returning Unix seconds, got {clock!r}")
        self.client = client
        self.url = url
        self.clock = clock
        self.options = BreakerOptions(
            failure_rate_threshold=failure_rate_threshold,
            window=window,
            window_type=window_type,
            minimum_calls=minimum_calls,
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            slow_call_threshold=slow_call_threshold,
            slow_call_rate_threshold=slow_call_rate_threshold,
            count_on=count_on,
            ignore_on=ignore_on,
            probe_lease=probe_lease,
            on_redis_error=on_redis_error,
        )
        self.keys = breaker_keys(self.prefix, self.name)
        self._args = ScriptArgs(self.options, clock)
        self._client_is_async = client is not None and inspect.iscoroutinefunction(
            getattr(client, "execute_command", None)
        )
        self._warned_at = float("-inf")
        self._calls: dict[tuple[str, bool], ScriptCall] = {}

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.options!r})"

    # -- plumbing ---------------------------------------------------------------------

    def _redis(self, want_async: bool) -> Any:
        if self.client is None:
            url = self.url or connection.default_url()
            return connection.async_client(url) if want_async else connection.sync_client(url)
        if want_async != self._client_is_async:
            use = "the a* methods and `async with`" if self._client_is_async else "the plain methods and `with`"
            raise ConfigurationError("client", f"{self.client!r} does not fit this method; use {use}")
        return self.client

    def _script(self, name: str, want_async: bool, args: list[str]) -> Any:
        client = self._redis(want_async)
        found = self._calls.get((name, want_async))
        if found is None or found.client is not client:  # bound once per client (per process, per loop)
            found = self._calls[(name, want_async)] = ScriptCall(client, name)
        return found(len(self.keys), *self.keys, *args)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.monotonic()

    def _unreachable(self, exc: BaseException, doing: str) -> None:
        """Log (at most every :data:`WARN_EVERY` seconds) that Redis failed while ``doing``."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("circuit breaker %r: Redis unreachable while %s: %r", self.name, doing, exc)

    def _bypass(self, exc: Exception) -> Permit:
        """The permit of a call admitted without Redis, or BackendUnavailable (``"deny"``)."""
        if self.options.on_redis_error == "deny":
            raise BackendUnavailable("redis", f"circuit breaker {self.name!r} cannot read its state: {exc}") from exc
        self._unreachable(exc, "admitting a call (letting it through)")
        return Permit(allowed=True, state=State.CLOSED, generation=-1, bypassed=True)

    def _admitted(self, reply: Any, token: str) -> Permit:
        permit = Permit.from_reply(self.name, reply, token)
        if permit.change is not None:
            announce(self, permit.change)
        return permit

    def _recorded(self, reply: Any) -> StateChange | None:
        change = change_of_record(self.name, reply, self.options.recovery_timeout_ms)
        if change is not None:
            announce(self, change)
        return change

    def _reset(self, reply: Any) -> StateChange | None:
        change = change_of_reset(self.name, reply)
        if change is not None:
            announce(self, change)
        return change

    @staticmethod
    def _duration_ms(duration: float | timedelta) -> int:
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        return max(0, round(seconds * 1000))

    @staticmethod
    def _check_outcome(outcome: str) -> Outcome:
        if outcome not in ("success", "failure", "ignored"):
            raise ConfigurationError("outcome", f"expected 'success', 'failure' or 'ignored', got {outcome!r}")
        return cast(Outcome, outcome)

    def _open_error(self, permit: Permit) -> CircuitOpen:
        return CircuitOpen(self.name, permit.retry_after)

    # -- redis.Redis --------------------------------------------------------------------

    def admit_request(self, token: str) -> tuple[list[str], list[str]]:
        """The keys and arguments of ``breaker_admit.lua`` for a call with permit ``token``.

        For callers that run the script themselves (a task's admission round trip);
        hand the script's reply to :meth:`permit_of`.
        """
        return list(self.keys), self._args.admit(token)

    def permit_of(self, reply: Any, token: str) -> Permit:
        """The permit ``breaker_admit.lua`` answered for ``token`` (a transition it made is announced)."""
        return self._admitted(reply, token)

    def record_request(
        self, permit: Permit, outcome: Outcome, duration: float | timedelta = 0.0
    ) -> tuple[list[str], list[str]] | None:
        """The keys and arguments of ``breaker_record.lua`` for an admitted call (see :meth:`recorded`).

        Returns ``None`` for a permit that needs no record (denied, or admitted without Redis).
        """
        outcome = self._check_outcome(outcome)
        if permit.bypassed or not permit.allowed:
            return None
        return list(self.keys), self._args.record(permit.generation, permit.token, outcome, self._duration_ms(duration))

    def recorded(self, reply: Any) -> StateChange | None:
        """The transition ``breaker_record.lua`` answered it made, if any (announced)."""
        return self._recorded(reply)

    def allow(self, token: str | None = None) -> Permit:
        """Ask, in one atomic script, whether a call may go ahead now.

        Args:
            token: the permit's token (default: a new one). Asking again with the token
                of a probe permit already granted returns that permit, not a second probe
                (a call re-sent after its reply was lost).

        Returns:
            A :class:`~.state.Permit`, truthy when allowed; hand it to :meth:`record`
            once the call ends. Denied permits need no record.

        Raises:
            BackendUnavailable: Redis failed and ``on_redis_error="deny"``.
        """
        token = token or uuid.uuid4().hex
        try:
            reply = self._script("breaker_admit", False, self._args.admit(token))
        except Exception as exc:
            if not TRANSIENT(exc):
                raise
            return self._bypass(exc)
        return self._admitted(reply, token)

    def record(self, permit: Permit, outcome: Outcome, duration: float | timedelta = 0.0) -> StateChange | None:
        """Record how an admitted call ended, in one atomic script; it may trip or close the breaker.

        An outcome from before the breaker last changed state (an older generation) is
        ignored. A Redis failure is logged, never raised: the call has already happened.

        Args:
            permit: what :meth:`allow` granted.
            outcome: ``"success"``, ``"failure"`` or ``"ignored"`` (see
                :meth:`~.options.BreakerOptions.outcome_of` to classify an error).
            duration: the call's duration in seconds (slow-call rules).

        Returns:
            The transition this outcome made, or ``None``.
        """
        outcome = self._check_outcome(outcome)
        if permit.bypassed or not permit.allowed:
            return None
        args = self._args.record(permit.generation, permit.token, outcome, self._duration_ms(duration))
        try:
            reply = self._script("breaker_record", False, args)
        except Exception as exc:
            if not TRANSIENT(exc):
                raise
            self._unreachable(exc, "recording an outcome (it is lost)")
            return None
        return self._recorded(reply)

    def state(self) -> BreakerState:
        """Read the breaker's state (read only: an OPEN breaker past its timeout still reads OPEN)."""
        return BreakerState.from_reply(self.name, self._script("breaker_control", False, self._args.control("state")))

    def reset(self) -> StateChange | None:
        """Close the breaker and empty its window; outcomes of calls already admitted are ignored.

        Returns:
            The transition, or ``None`` if it was already CLOSED.
        """
        return self._reset(self._script("breaker_control", False, self._args.control("reset")))

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpen: the breaker refused the call; ``fn`` was not called.
            BackendUnavailable: Redis failed and ``on_redis_error="deny"``.
        """
        with self:
            return fn(*args, **kwargs)

    def __enter__(self) -> Permit:
        permit = self.allow()
        if not permit:
            raise self._open_error(permit)
        _active.set((*_active.get(), (id(self), permit, self._now())))
        return permit

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit, started = self._pop()
        self.record(permit, self.options.outcome_of(exc), self._now() - started)

    def _pop(self) -> tuple[Permit, float]:
        stack = _active.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == id(self):
                _active.set(stack[:i] + stack[i + 1 :])
                return stack[i][1], stack[i][2]
        raise RuntimeError(f"circuit breaker {self.name!r}: exit without a matching enter")

    # -- redis.asyncio.Redis ------------------------------------------------------------

    async def aallow(self) -> Permit:
        """:meth:`allow` for ``redis.asyncio``."""
        token = uuid.uuid4().hex
        try:
            reply = await self._script("breaker_admit", True, self._args.admit(token))
        except Exception as exc:
            if not TRANSIENT(exc):
                raise
            return self._bypass(exc)
        return self._admitted(reply, token)

    async def arecord(self, permit: Permit, outcome: Outcome, duration: float | timedelta = 0.0) -> StateChange | None:
        """:meth:`record` for ``redis.asyncio``."""
        outcome = self._check_outcome(outcome)
        if permit.bypassed or not permit.allowed:
            return None
        args = self._args.record(permit.generation, permit.token, outcome, self._duration_ms(duration))
        try:
            reply = await self._script("breaker_record", True, args)
        except Exception as exc:
            if not TRANSIENT(exc):
                raise
            self._unreachable(exc, "recording an outcome (it is lost)")
            return None
        return self._recorded(reply)

    async def astate(self) -> BreakerState:
        """:meth:`state` for ``redis.asyncio``."""
        reply = await self._script("breaker_control", True, self._args.control("state"))
        return BreakerState.from_reply(self.name, reply)

    async def areset(self) -> StateChange | None:
        """:meth:`reset` for ``redis.asyncio``."""
        return self._reset(await self._script("breaker_control", True, self._args.control("reset")))

    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker (see :meth:`call`)."""
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> Permit:
        permit = await self.aallow()
        if not permit:
            raise self._open_error(permit)
        _active.set((*_active.get(), (id(self), permit, self._now())))
        return permit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit, started = self._pop()
        await self.arecord(permit, self.options.outcome_of(exc), self._now() - started)

    # -- decorator ----------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate a plain or async function: every call goes through this breaker.

        The wrapper's ``breaker`` attribute is this breaker.
        """
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            guarded_async.breaker = self  # type: ignore[attr-defined]
            return cast(F, guarded_async)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        guarded.breaker = self  # type: ignore[attr-defined]
        return cast(F, guarded)
