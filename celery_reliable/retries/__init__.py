"""Retries that help instead of hurt: classified errors, jittered backoff, a shared budget.

- :class:`RetryPolicy` decides, for one failed attempt, whether to retry and after how
  long (exponential backoff with jitter, ``Retry-After``), or to dead-letter;
- conditions (:func:`on`, :func:`when`, :func:`http_status`, :func:`message_matches`,
  :func:`named`, :data:`PERMANENT`, :data:`TRANSIENT`) say which errors are which, and
  compose with ``|``, ``&`` and ``~``;
- :func:`retry` applies a policy to a plain or async function, outside Celery;
- :class:`RetryBudget` caps retries across every worker at a fraction of recent calls.
"""

from __future__ import annotations

from .budget import BudgetState, RetryBudget
from .conditions import NOTHING, Condition, http_status, message_matches, on, status_of, when
from .decision import Decision
from .decorator import retry
from .known import PERMANENT, TRANSIENT, named
from .policy import RetryPolicy
from .retry_after import parse_retry_after, retry_after_of

__all__ = [
    "NOTHING",
    "PERMANENT",
    "TRANSIENT",
    "BudgetState",
    "Condition",
    "Decision",
    "RetryBudget",
    "RetryPolicy",
    "http_status",
    "message_matches",
    "named",
    "on",
    "parse_retry_after",
    "retry",
    "retry_after_of",
    "status_of",
    "when",
]
