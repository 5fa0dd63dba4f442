"""The breaker's state in Redis: three keys under one hash tag, three atomic scripts.

- ``<prefix>:cb:{<name>}`` a hash: state, generation, when OPEN ends, consecutive
  failures, successful probes, and a count window's counters;
- ``<prefix>:cb:{<name>}:w`` the window: a string ring of one byte per call (count) or a
  hash of per-bucket counters (time);
- ``<prefix>:cb:{<name>}:p`` the probe permits out in HALF_OPEN, a sorted set scored by
  the end of each permit's lease.

``breaker_admit.lua`` decides whether a call goes ahead (and moves OPEN to HALF_OPEN),
``breaker_record.lua`` records an outcome (and trips or closes the breaker),
``breaker_control.lua`` reads or resets. Each returns the transition it made, if any.
Every script uses the server's clock, unless given an explicit ``now`` (tests).
This module builds their arguments and reads their replies; it calls no driver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from .options import BreakerOptions, Outcome
from .state import State, StateChange

_OUTCOME_CODES: dict[str, str] = {"success": "s", "failure": "f", "ignored": "i"}


def breaker_keys(prefix: str, name: str) -> list[str]:
    """The three keys of breaker ``name``; a name with ``{`` or ``}`` is written as its SHA-256.

    They share the Redis Cluster hash tag ``{<name>}``, so one script can touch all three.
    """
    if "{" in name or "}" in name:
        name = "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    base = f"{prefix}:cb:{{{name}}}"
    return [base, f"{base}:w", f"{base}:p"]


class ScriptArgs:
    """The ARGV of each breaker script for one breaker.

    Args:
        options: the breaker's rules.
        clock: returns the time in Unix seconds, to decide at instead of the server's
            clock (tests and simulations); ``None`` for the server's clock.
    """

    def __init__(self, options: BreakerOptions, clock: Callable[[], float] | None = None) -> None:
        self.options = options
        self.clock = clock
        self._rules = [str(a) for a in options.script_args()]
        window = "n" if not options.uses_window else ("c" if options.window_type == "count" else "t")
        self._window = [window, str(options.buckets), str(options.bucket_ms)]

    def now(self) -> str:
        """ARGV[1] of every script: the injected time in ms, or ``""`` for Redis ``TIME``."""
        return "" if self.clock is None else str(round(self.clock() * 1000))

    def admit(self, token: str) -> list[str]:
        """ARGV of ``breaker_admit.lua`` for a call whose probe permit would be ``token``."""
        o = self.options
        return [
            self.now(),
            str(o.recovery_timeout_ms),
            str(o.half_open_max_calls),
            str(o.probe_lease_ms),
            token,
            str(o.ttl_ms),
        ]

    def record(self, generation: int, token: str, outcome: Outcome, duration_ms: int) -> list[str]:
        """ARGV of ``breaker_record.lua`` for one call's outcome."""
        code = _OUTCOME_CODES[outcome]
        return [self.now(), str(generation), token, code, str(duration_ms), *self._rules, str(self.options.ttl_ms)]

    def control(self, op: str) -> list[str]:
        """ARGV of ``breaker_control.lua`` for ``op`` (``"state"`` or ``"reset"``)."""
        return [self.now(), op, *self._window, str(self.options.ttl_ms)]


def change_of_record(name: str, reply: list[Any], recovery_ms: int) -> StateChange | None:
    """The transition a ``breaker_record.lua`` reply reports, if any."""
    _recorded, code, gen, before, reason, calls, failures, slows, now_ms = reply
    if int(before) < 0:
        return None
    new = State.from_code(code)
    return StateChange(
        name=name,
        old=State.from_code(before),
        new=new,
        reason=reason.decode() if isinstance(reason, bytes) else str(reason),
        generation=int(gen),
        retry_after=recovery_ms / 1000 if new is State.OPEN else 0.0,
        calls=int(calls),
        failures=int(failures),
        slow_calls=int(slows),
        at=int(now_ms) / 1000,
    )


def change_of_reset(name: str, reply: list[Any]) -> StateChange | None:
    """The transition a ``breaker_control.lua`` reset reports (none if it was CLOSED)."""
    before = int(reply[10])
    if before < 0:
        return None
    return StateChange(name, State.from_code(before), State.CLOSED, "reset", int(reply[1]), at=int(reply[11]) / 1000)
