"""``breaker_state_changed``: one signal, one log line per transition, fleet-wide.

Every transition is made by exactly one script call, so exactly one process announces it:
the one whose call moved the breaker. The Celery task integration connects to the signal
to send a Celery event; anyone else may too (dashboards, alerts)::

    from celery_reliable.breaker import breaker_state_changed

    @breaker_state_changed.connect(weak=False)
    def on_change(sender, change, **kwargs):
        metrics.gauge("breaker_open", change.new is State.OPEN, tags={"breaker": change.name})

A receiver that raises is logged by the signal and never breaks the call that announced.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.utils.dispatch import Signal

from .state import State, StateChange

logger = logging.getLogger("celery_reliable.breaker")

#: Sent with ``sender=`` the :class:`~.breaker.CircuitBreaker` and ``change=`` a
#: :class:`~.state.StateChange`, by the process whose call made the transition.
breaker_state_changed = Signal(name="breaker_state_changed")


def announce(sender: Any, change: StateChange) -> None:
    """Log ``change`` (WARNING when the breaker opens, INFO otherwise) and send the signal."""
    level = logging.WARNING if change.new is State.OPEN else logging.INFO
    detail = ""
    if change.calls:
        detail = f" ({change.failures} failed, {change.slow_calls} slow of {change.calls} calls)"
    if change.new is State.OPEN:
        detail += f"; probes in {change.retry_after:g}s"
    logger.log(
        level,
        "circuit breaker %r %s -> %s: %s%s",
        change.name,
        change.old.value,
        change.new.value,
        change.reason,
        detail,
        extra={"breaker": change.as_fields()},
    )
    breaker_state_changed.send(sender=sender, change=change)
