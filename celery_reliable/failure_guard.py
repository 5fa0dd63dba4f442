"""What a ReliableTask does when its body fails or its message cannot run: retry or dead-letter.

- With ``retry_policy``, a failure is classified: a retry is parked in the deferred set
  for the policy's jittered delay (Celery's own ``retry``: same task id, ``retries + 1``,
  state RETRY), unless the retry budget is spent; a permanent or exhausted failure is
  stored as a dead letter, then fails the task as usual.
- Arguments that do not fit the task's signature are dead-lettered as ``bad_arguments``.
- A task id delivered more than ``reliable_max_deliveries`` times (its worker died on each)
  is dead-lettered as ``poison`` and not run again.

Dead letters need ``reliable_database_url``; without one, the letter is logged in full
at ERROR level instead (never dropped silently).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from .deadletter import DeadLetter, DeadLetterStore, dedup_key_for, exception_fields, history_entry
from .events import emit
from .jsoncodec import dumps
from .logs import log_decision

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: The message header carrying the failures of earlier attempts.
HISTORY_HEADER = "reliable_history"
#: Headers a dead letter does not keep: the history has its own column, and a rate-limit
#: booking belongs to the delivery that made it (a replay books anew).
_NOT_KEPT = frozenset({HISTORY_HEADER, "reliable_rate_slot"})
#: Longest exception message kept per attempt in the history.
_MESSAGE_CHARS = 500


def history(req: Context) -> list[dict[str, Any]]:
    """The failures of earlier attempts, as carried by the retry messages."""
    found = getattr(req, HISTORY_HEADER, None)
    if found is None and isinstance(getattr(req, "headers", None), dict):
        found = req.headers.get(HISTORY_HEADER)
    return list(found) if isinstance(found, list) else []


def on_failure(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception, rt: Runtime
) -> None:
    """Retry (raises Celery's ``Retry``) or dead-letter a failed attempt; returns to let ``exc`` propagate."""
    attempt = int(req.retries or 0) + 1
    past = [*history(req), history_entry(attempt, type(exc).__name__, str(exc)[:_MESSAGE_CHARS])]
    if isinstance(exc, TypeError) and not _fits(task, args, kwargs):
        dead_letter(task, req, args, kwargs, exc, rt, "bad_arguments", attempt, past)
        return
    policy = getattr(task, "retry_policy", None)
    if policy is None:
        return
    decision = policy.classify(exc, attempt)
    if decision.should_retry and not _budget_allows(task, rt):
        dead_letter(task, req, args, kwargs, exc, rt, "budget", attempt, past)
        return
    if decision.should_retry:
        log_decision(
            task,
            "retried",
            {"attempt": attempt, "max_attempts": policy.max_attempts, "delay_ms": decision.delay_ms},
            note=f"{type(exc).__name__} is {decision.reason}",
        )
        raise task.retry(
            exc=exc, countdown=decision.delay, max_retries=policy.max_attempts, headers={HISTORY_HEADER: past}
        )
    dead_letter(task, req, args, kwargs, exc, rt, decision.reason, attempt, past, detail=decision.detail)


def poison(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, deliveries: int
) -> NoReturn:
    """Dead-letter a task whose worker died on each of its ``deliveries``, and end it without running."""
    from .errors import PoisonMessage

    exc = PoisonMessage(req.id, deliveries, rt.config.max_deliveries)
    dead_letter(task, req, args, kwargs, exc, rt, "poison", deliveries, history(req))
    raise exc


def dead_letter(
    task: Task,
    req: Context,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException,
    rt: Runtime,
    reason: str,
    attempts: int,
    past: list[dict[str, Any]],
    detail: str = "",
) -> None:
    """Store one dead letter for this task id (idempotent) and say so in an event and the log."""
    info = req.delivery_info or {}
    fields = exception_fields(exc)
    letter = DeadLetter(
        dedup_key_for(req.id),
        reason,
        queue=info.get("routing_key") or task.queue or task.app.conf.task_default_queue,
        task_id=req.id,
        task_name=task.name,
        args=list(args),
        kwargs=dict(kwargs),
        headers={k: v for k, v in (req.headers or {}).items() if k not in _NOT_KEPT} or None,
        attempts=attempts,
        history=past,
        exception_type=fields["exception_type"],
        exception_message=fields["exception_message"],
        traceback=fields["traceback"],
    )
    if not rt.has_database:  # the letter in full in the log, the only place left to keep it
        log_decision(
            task,
            "dead-lettered",
            {"reason": reason, "attempts": attempts, "stored": "log-only"},
            level=logging.ERROR,
            note="no reliable_database_url to store it in: "
            + dumps({"args": letter.args, "kwargs": letter.kwargs, "error": letter.exception_message}, where="letter"),
        )
        return
    letter_id, created = DeadLetterStore(rt.engine()).add(letter)
    emit(
        task,
        "task-dead-lettered",
        rt.config.send_events,
        log_level=logging.ERROR if created else logging.INFO,  # a repeat finds its letter stored already
        log_note=f"{type(exc).__name__}: {str(exc)[:_MESSAGE_CHARS]}" + (f" ({detail})" if detail else ""),
        log_fields={"stored": "new" if created else "already"},
        reason=reason,
        letter_id=letter_id,
        attempts=attempts,
    )


def _fits(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to check against
        return True
    return True


def _budget_allows(task: Task, rt: Runtime) -> bool:
    budget = budget_for(task, rt)
    if budget is None:
        return True
    try:
        return budget.try_spend()
    except Exception as exc:  # Redis down: the retry itself is parked in Redis anyway; let it try
        logger.warning("%s: retry budget unavailable, retrying anyway: %r", task.name, exc)
        return True


def budget_for(task: Task, rt: Runtime) -> Any:
    """The task's retry budget, or None."""
    option = getattr(task, "retry_budget", None)
    if not option:
        return None
    from .retries import RetryBudget

    name = task.name if option is True else str(option)
    return RetryBudget(rt.redis, name, prefix=rt.config.key_prefix)
