"""A circuit breaker shared by every process through Redis, decided by atomic scripts.

Three states: CLOSED lets calls through and counts their outcomes in a window; OPEN
refuses them for ``recovery_timeout``; HALF_OPEN lets a bounded number of probes through
fleet-wide, and closes after enough succeed or opens again on the first that fails.
The breaker opens on a failure rate over a count- or time-based window (the seed's "50 %
over 10 calls"), a slow-call rate, or consecutive failures (``failure_threshold=5``).

- :class:`CircuitBreaker`: ``with breaker:``, ``async with breaker:``, ``breaker.call``,
  ``breaker.acall``, or ``allow()`` / ``record()`` for integrations;
- :func:`circuit_breaker`: the decorator of the seed's quick start;
- :class:`BreakerOptions`: the rules, checked once;
- :data:`breaker_state_changed`: sent once per transition, by the process that made it.

A refused call raises :class:`~celery_reliable.errors.CircuitOpen` with ``retry_after``.
Which errors count as failures comes from the retry policy's classification
(:mod:`celery_reliable.retries.known`): by default every error except the caller's own
(:data:`~celery_reliable.retries.PERMANENT`: ``TypeError``, HTTP 401, ...).
If Redis cannot be reached, calls go through unguarded and a warning is logged
(``on_redis_error="deny"`` raises instead).
"""

from __future__ import annotations

from .breaker import CircuitBreaker
from .decorator import circuit_breaker
from .options import DEFAULT_COUNT_ON, BreakerOptions
from .signals import breaker_state_changed
from .state import BreakerState, Permit, State, StateChange

__all__ = [
    "DEFAULT_COUNT_ON",
    "BreakerOptions",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "State",
    "StateChange",
    "breaker_state_changed",
    "circuit_breaker",
]
