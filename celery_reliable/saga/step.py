"""``Step``: one forward action of a saga and the compensation that undoes it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..config import as_seconds
from ..retries import RetryPolicy
from .errors import SagaDefinitionError

#: Step and saga names become parts of Celery task names.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")

#: The lease of a step unless the Step says otherwise: renewed every third while the step
#: runs, so it bounds how long a step whose worker died waits before it is driven again.
DEFAULT_LEASE = 30.0

#: How a compensation retries unless told otherwise: it must not give up easily
#: (exponential backoff from 100 ms, capped at 30 s, full jitter; 10 attempts).
DEFAULT_COMPENSATION_POLICY = RetryPolicy(max_attempts=10, base=0.1, cap=30.0)
DEFAULT_COMPENSATION_POLICY_OPTIONS: dict[str, Any] = {"retry_policy": DEFAULT_COMPENSATION_POLICY}

#: Task options a step may not set: the saga sets them (or JSON is the only encoding).
RESERVED_OPTIONS = frozenset(
    {
        "name",
        "bind",
        "base",
        "idempotency_key",
        "idempotency_namespace",
        "idempotency_on_publish",
        "serializer",
        "inbox",
        "typing",
    }
)


@dataclass(frozen=True, init=False)
class Step:
    """One step of a :class:`~celery_reliable.saga.Saga`.

    ``action(context) -> dict | None`` runs forward; its dict is merged into the saga's
    context (top-level keys, later steps win) and every later step and compensation sees
    it. ``compensate(context)`` undoes it; it runs only if the step completed and a later
    step failed, the saga timed out, or it was cancelled, and it receives the context as it
    was when compensation began. Both run as :class:`~celery_reliable.ReliableTask` tasks
    keyed by saga id and step index, so a step driven twice applies once; database
    effects written through ``self.transaction()`` commit in one transaction with the
    saga's progress.

    Args:
        action: the forward callable.
        compensate: the callable that undoes it, or ``None`` (nothing to undo).
        name: the step's name (default ``action.__name__``); unique within the saga.
        bind: call ``action(task, context)`` and ``compensate(task, context)`` with the
            running task first (for ``task.transaction()`` and
            ``task.request.idempotency_key``), like Celery's ``bind=True``.
        lease: seconds (or timedelta) after which a step whose worker stopped renewing
            it is driven again (default 30 s); renewed while the step runs.
        compensate_options: ReliableTask options of the compensation task, over the
            default ``retry_policy`` (10 attempts, backoff from 100 ms capped at 30 s).
        **options: ReliableTask/Celery options of the step's task (``retry_policy``,
            ``circuit_breaker``, ``bulkhead``, ``global_rate_limit``, ``queue``,
            ``time_limit``, ...).

    Raises:
        SagaDefinitionError: a non-callable action or compensation, a bad name or lease,
            or an option the saga sets itself.
    """

    action: Callable[..., Any]
    compensate: Callable[..., Any] | None = None
    name: str = ""
    bind: bool = False
    lease: float = DEFAULT_LEASE
    compensate_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        action: Callable[..., Any],
        compensate: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        bind: bool = False,
        lease: float | timedelta = DEFAULT_LEASE,
        compensate_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if not callable(action):
            raise SagaDefinitionError(str(name or action), f"a step's action must be callable, got {action!r}")
        if compensate is not None and not callable(compensate):
            raise SagaDefinitionError(
                str(name or action), f"the compensation must be callable or None, got {compensate!r}"
            )
        found = name if name is not None else getattr(action, "__name__", "")
        if not isinstance(found, str) or not NAME_RE.match(found) or found == "<lambda>":
            raise SagaDefinitionError(
                str(found), f"bad step name {found!r}: pass name= (letters, digits, _ . : -, at most 100)"
            )
        try:
            seconds = as_seconds("lease", lease)
        except Exception as exc:
            raise SagaDefinitionError(found, str(exc)) from None
        if seconds < 0.5:
            raise SagaDefinitionError(found, f"lease must be at least 0.5 s, got {lease!r}")
        comp_options = {**DEFAULT_COMPENSATION_POLICY_OPTIONS, **(compensate_options or {})}
        for given in (options, comp_options):
            clash = sorted(RESERVED_OPTIONS & set(given))
            if clash:
                raise SagaDefinitionError(found, f"option(s) {', '.join(clash)} are set by the saga")
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "compensate", compensate)
        object.__setattr__(self, "name", found)
        object.__setattr__(self, "bind", bool(bind))
        object.__setattr__(self, "lease", seconds)
        object.__setattr__(self, "compensate_options", comp_options)
        object.__setattr__(self, "options", dict(options))

    @property
    def lease_ms(self) -> int:
        """The lease in milliseconds."""
        return round(self.lease * 1000)
