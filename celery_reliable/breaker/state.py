"""What the breaker scripts answer: states, permits, transitions and snapshots.

Times are seconds, measured on the Redis server's clock (or the injected clock) by the
script that decided.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class State(str, enum.Enum):
    """The three states of a circuit breaker (their values are what logs and events show)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @classmethod
    def from_code(cls, code: int) -> State:
        """The state the scripts write as ``code`` (0 closed, 1 open, 2 half-open)."""
        return _BY_CODE[int(code)]


_BY_CODE = {0: State.CLOSED, 1: State.OPEN, 2: State.HALF_OPEN}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition, made by exactly one script call somewhere in the fleet.

    Attributes:
        name: the breaker's name.
        old: the state before.
        new: the state after.
        reason: ``"failure_rate"``, ``"slow_call_rate"``, ``"consecutive_failures"``,
            ``"recovery_timeout"``, ``"probe_failed"``, ``"probe_slow"``,
            ``"probes_succeeded"`` or ``"reset"``.
        generation: the breaker's generation after the change.
        retry_after: seconds until the breaker lets probes through (OPEN), else 0.
        calls: calls in the window when a rate rule tripped, else 0.
        failures: failed calls among them.
        slow_calls: slow calls among them.
        at: the time of the change (Unix seconds).
    """

    name: str
    old: State
    new: State
    reason: str
    generation: int
    retry_after: float = 0.0
    calls: int = 0
    failures: int = 0
    slow_calls: int = 0
    at: float = 0.0

    def as_fields(self) -> dict[str, Any]:
        """The change as plain values, for a Celery event or a structured log."""
        return {
            "breaker": self.name,
            "old_state": self.old.value,
            "new_state": self.new.value,
            "reason": self.reason,
            "generation": self.generation,
            "retry_after": self.retry_after,
            "calls": self.calls,
            "failures": self.failures,
            "slow_calls": self.slow_calls,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to ``allow()``; truthy when the call may go ahead.

    A granted permit must be given back to ``record()`` once the call ends (the context
    manager, ``call()`` and the decorator do it), so its outcome counts and a probe slot
    is freed.

    Attributes:
        allowed: whether the call may go ahead.
        state: the breaker's state after the decision.
        generation: the breaker's generation; an outcome from an older one is ignored.
        token: the probe permit's id in HALF_OPEN, else ``""``.
        retry_after: seconds until a call may be admitted, when denied; else 0.
        at: the time of the decision (Unix seconds).
        change: the transition this decision made (OPEN to HALF_OPEN), if any.
        bypassed: ``True`` when Redis could not be reached and the call goes through
            unguarded (``on_redis_error="allow"``); its outcome is not recorded.
    """

    allowed: bool
    state: State
    generation: int
    token: str = ""
    retry_after: float = 0.0
    at: float = 0.0
    change: StateChange | None = None
    bypassed: bool = False

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_reply(cls, name: str, reply: list[Any], token: str) -> Permit:
        """Build a permit from a ``breaker_admit.lua`` reply."""
        allowed, code, gen, wait_ms, before, reason, now_ms = reply
        state = State.from_code(code)
        change = None
        if int(before) >= 0:
            change = StateChange(name, State.from_code(before), state, _text(reason), int(gen), at=now_ms / 1000)
        ok = int(allowed) == 1
        return cls(
            allowed=ok,
            state=state,
            generation=int(gen),
            token=token if ok and state is State.HALF_OPEN else "",
            retry_after=0.0 if ok else max(0, int(wait_ms)) / 1000,
            at=int(now_ms) / 1000,
            change=change,
        )


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A snapshot of one breaker, for dashboards and ``celery reliable status``.

    Attributes:
        name: the breaker's name.
        state: CLOSED, OPEN or HALF_OPEN.
        generation: transitions so far (resets included), while the keys live.
        retry_after: seconds until OPEN lets probes through (0 in other states).
        since: when the current state began (Unix seconds; 0 if never changed).
        consecutive_failures: failures in a row, in CLOSED.
        probe_successes: successful probes so far, in HALF_OPEN.
        probes_out: probe permits out now, in HALF_OPEN.
        calls: calls in the window (CLOSED; 0 without a rate rule).
        failures: failed calls among them.
        slow_calls: slow calls among them.
        at: the time of the reading (Unix seconds).
    """

    name: str
    state: State
    generation: int
    retry_after: float
    since: float
    consecutive_failures: int
    probe_successes: int
    probes_out: int
    calls: int
    failures: int
    slow_calls: int
    at: float

    @property
    def failure_rate(self) -> float:
        """Failed calls over calls in the window (0.0 when empty)."""
        return self.failures / self.calls if self.calls else 0.0

    @classmethod
    def from_reply(cls, name: str, reply: list[Any]) -> BreakerState:
        """Build a snapshot from a ``breaker_control.lua`` reply."""
        code, gen, wait_ms, since_ms, cf, hs, probes, calls, failures, slows, _before, now_ms = (int(x) for x in reply)
        return cls(
            name=name,
            state=State.from_code(code),
            generation=gen,
            retry_after=wait_ms / 1000,
            since=since_ms / 1000,
            consecutive_failures=cf,
            probe_successes=hs,
            probes_out=probes,
            calls=calls,
            failures=failures,
            slow_calls=slows,
            at=now_ms / 1000,
        )
