"""Decision: what a :class:`~.policy.RetryPolicy` says to do with one failed attempt."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: ``"retry"`` or ``"dead_letter"``.
Action = Literal["retry", "dead_letter"]
#: Why: see :class:`Decision`.
Reason = Literal["retryable", "permanent", "exhausted", "not_retryable"]


@dataclass(frozen=True)
class Decision:
    """What to do with a failed attempt.

    Attributes:
        action: ``"retry"`` or ``"dead_letter"``.
        reason: ``"retryable"`` (retry), ``"permanent"`` (the error matches
            ``dont_retry_on``: retrying cannot help), ``"not_retryable"`` (it does not match
            ``retry_on``, or is not an ``Exception`` at all), or ``"exhausted"`` (no attempt
            left, or the server asks for a wait beyond ``max_retry_after``).
        delay: seconds to wait before the retry (``None`` when dead-lettering).
        detail: a sentence for logs and dead-letter records.
    """

    action: Action
    reason: Reason
    delay: float | None = None
    detail: str = ""

    @property
    def should_retry(self) -> bool:
        """Whether the action is ``"retry"``."""
        return self.action == "retry"

    @property
    def delay_ms(self) -> int | None:
        """The delay in whole milliseconds, rounded up (``None`` when dead-lettering)."""
        return None if self.delay is None else math.ceil(self.delay * 1000)
