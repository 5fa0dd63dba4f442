"""Dead-letter the messages a worker cannot run, instead of letting Celery drop them.

Celery logs and discards a message whose body cannot be decoded, that names a task the
worker does not know, or that is not a task message at all. This consumer bootstep
stores each one in the dead-letter store first (with its raw body and headers), then
lets Celery discard it as before, so the worker keeps serving the others. If the store
cannot be reached, the message is left unacknowledged (the broker delivers it again
later) rather than lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from .deadletter import DeadLetter, DeadLetterStore, dedup_key_for
from .logs import log_decision_for

logger = logging.getLogger("celery_reliable")


def letter_of(message: Any, reason: str, exc: BaseException | None) -> DeadLetter:
    """A dead letter holding a raw message that could not be run."""
    headers = dict(getattr(message, "headers", None) or {})
    info = getattr(message, "delivery_info", None) or {}
    body = getattr(message, "body", None)
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    task_name = headers.get("task") if isinstance(headers.get("task"), str) else None
    return DeadLetter(
        dedup_key_for(task_id, body if body is not None else repr(message)),
        reason,
        queue=info.get("routing_key"),
        task_id=task_id,
        task_name=task_name,
        headers=headers or None,
        raw_body=body if isinstance(body, (bytes, str)) else None,
        exception_type=type(exc).__name__ if exc is not None else None,
        exception_message=str(exc) if exc is not None else "not a task message",
        attempts=0,
    )


class MalformedMessages(bootsteps.StartStopStep):
    """Consumer bootstep: wraps the consumer's handlers of messages it cannot run."""

    label = "celery-reliable malformed messages"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        from .config import get_config

        if get_config(c.app).database_url:
            c.on_decode_error = self._keep(c, c.on_decode_error, "undeserializable", message_first=True)
            c.on_unknown_message = self._keep(c, c.on_unknown_message, "undeserializable")
            c.on_unknown_task = self._keep(c, c.on_unknown_task, "unknown_task")
            c.on_invalid_task = self._keep(c, c.on_invalid_task, "undeserializable")
        super().__init__(c, **kwargs)

    @staticmethod
    def _keep(c: Any, original: Callable[..., Any], reason: str, message_first: bool = False) -> Callable[..., Any]:
        def handler(*args: Any) -> Any:
            if message_first:  # on_decode_error(message, exc)
                message, exc = args[0], args[1]
            else:  # on_unknown_message(body, message) / on_unknown_task(body, message, exc) / on_invalid_task
                message, exc = args[1], (args[2] if len(args) > 2 else None)
            if not store(c.app, letter_of(message, reason, exc)):
                return None  # unacknowledged: delivered again later, never dropped
            return original(*args)

        return handler


def store(app: Any, letter: DeadLetter) -> bool:
    """Store ``letter``; False (and an error logged) if the store cannot be reached."""
    from .runtime import runtime

    try:
        letter_id, created = DeadLetterStore(runtime(app).engine()).add(letter)
    except Exception as exc:
        logger.error("could not dead-letter a %s message, leaving it unacknowledged: %r", letter.reason, exc)
        return False
    if created:
        log_decision_for(
            letter.task_name,
            letter.task_id,
            "dead-lettered",
            None,
            {"reason": letter.reason, "letter_id": letter_id, "queue": letter.queue},
            level=logging.ERROR,
            note="a message the worker cannot run",
        )
    return True
