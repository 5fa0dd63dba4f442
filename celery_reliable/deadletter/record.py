"""The dead-letter record and the helpers that build one."""

from __future__ import annotations

import hashlib
import traceback as tb
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..errors import ReliableError

#: Why a task was dead-lettered.
#:
#: ``exhausted``: its retries ran out; ``permanent``: it raised an error marked permanent;
#: ``poison``: its worker died on every delivery; ``undeserializable``: its message body could
#: not be decoded; ``unknown_task``: no worker knows its name; ``bad_arguments``: its
#: arguments do not fit the task's signature; ``budget``: its retry budget was spent;
#: ``bulkhead_full``: its bulkhead was full and the task chose ``bulkhead_on_full="reject"``.
REASONS: tuple[str, ...] = (
    "exhausted",
    "permanent",
    "poison",
    "undeserializable",
    "unknown_task",
    "bad_arguments",
    "budget",
    "bulkhead_full",
)

#: The key of the wrapper that stands for a value JSON could not hold: ``{UNSERIALIZABLE: repr}``.
UNSERIALIZABLE = "__unserializable__"


class DeadLetterNotFound(ReliableError, LookupError):
    """No dead letter has this id (never stored, or purged).

    Attributes:
        letter_id: the id asked for.
    """

    def __init__(self, letter_id: int) -> None:
        self.letter_id = letter_id
        self.message = f"no dead letter with id {letter_id}"
        super().__init__(letter_id)


@dataclass(frozen=True)
class DeadLetter:
    """One task that will not run again by itself.

    Build one with the first fields and hand it to :meth:`DeadLetterStore.add`; the
    fields from ``id`` on are the store's and are filled in by what it returns.

    Attributes:
        dedup_key: unique per letter: the task id, or :func:`body_dedup_key` of a
            malformed message's raw body. Storing the same key twice keeps one row.
        reason: one of :data:`REASONS`.
        queue: the queue the message came from, and where a replay goes.
        task_id: the task's id (``None`` for a malformed message).
        task_name: the task's name (``None`` when unknown).
        args: positional arguments (a list); values JSON cannot hold are stored as
            ``{"__unserializable__": repr}`` and make the letter not replayable.
        kwargs: keyword arguments (a dict), stored the same way.
        headers: the message headers (a dict), stored the same way.
        raw_body: the message body as received, for messages that could not be decoded.
            Bytes that are not UTF-8 are stored as base64 (see ``raw_body_encoding``).
        exception_type: qualified name of the last exception (``module.Class``).
        exception_message: its message.
        traceback: its formatted traceback.
        attempts: how many times the task ran (or was delivered, for ``poison``).
        history: one :func:`history_entry` per failed attempt, oldest first.
        first_failed_at: the first failure (default: when stored).
        last_failed_at: the last failure (default: when stored).
        replayable: ``None`` lets the store decide (a task name, JSON arguments and a
            decodable body); ``False`` forbids replaying.
        raw_body_encoding: ``utf-8`` or ``base64`` (set by the store).
        id: the row id (set by the store).
        created_at: when the letter was stored.
        replayed_at: when it was last replayed.
        replay_task_id: the task id of the last replay.
        replay_count: how many times it was replayed.
    """

    dedup_key: str
    reason: str
    queue: str | None = None
    task_id: str | None = None
    task_name: str | None = None
    args: Any = None
    kwargs: Any = None
    headers: Any = None
    raw_body: str | bytes | None = None
    exception_type: str | None = None
    exception_message: str | None = None
    traceback: str | None = None
    attempts: int = 0
    history: Sequence[Mapping[str, Any]] = ()
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    replayable: bool | None = None
    raw_body_encoding: str | None = None
    id: int | None = None
    created_at: datetime | None = None
    replayed_at: datetime | None = None
    replay_task_id: str | None = None
    replay_count: int = 0

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"dead-letter reason must be one of {', '.join(REASONS)}, got {self.reason!r}")
        if not isinstance(self.dedup_key, str) or not self.dedup_key:
            raise ValueError(f"dead-letter dedup_key must be a non-empty string, got {self.dedup_key!r}")
        if self.attempts < 0:
            raise ValueError(f"dead-letter attempts must be >= 0, got {self.attempts!r}")

    def why_not_replayable(self) -> str | None:
        """Why this letter cannot be replayed, or ``None`` when it can."""
        if not self.task_name:
            return "the message has no task name (malformed)"
        if self.reason == "undeserializable" or (self.args is None and self.raw_body is not None):
            return "the message body could not be deserialized"
        if has_unserializable(self.args) or has_unserializable(self.kwargs):
            return "some arguments could not be stored as JSON"
        if not isinstance(self.args, (list, tuple, type(None))) or not isinstance(self.kwargs, (Mapping, type(None))):
            return "the arguments are not a list and a mapping"
        if self.replayable is False:
            return "marked not replayable when it was stored"
        return None


def _wrapped(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and UNSERIALIZABLE in value


def has_unserializable(value: Any) -> bool:
    """Whether ``value`` (or one of its items) is an ``{"__unserializable__": repr}`` wrapper."""
    if _wrapped(value):
        return True
    if isinstance(value, Mapping):
        return any(_wrapped(v) for v in value.values())
    return isinstance(value, (list, tuple)) and any(_wrapped(v) for v in value)


def body_dedup_key(raw_body: str | bytes) -> str:
    """``body:<sha256>`` of a message body, the dedup key of a letter without a usable task id."""
    data = raw_body.encode("utf-8", "surrogatepass") if isinstance(raw_body, str) else bytes(raw_body)
    return "body:" + hashlib.sha256(data).hexdigest()


def dedup_key_for(task_id: str | None, raw_body: str | bytes | None = None) -> str:
    """The dedup key of a letter: its task id, else :func:`body_dedup_key` of its body.

    Raises:
        ValueError: when there is neither a task id nor a body.
    """
    if isinstance(task_id, str) and task_id.strip():
        return task_id
    if raw_body is None:
        raise ValueError("a dead letter needs a task id or the raw message body")
    return body_dedup_key(raw_body)


def history_entry(
    attempt: int, exception_type: str | None, message: str | None, at: datetime | None = None
) -> dict[str, Any]:
    """One entry of :attr:`DeadLetter.history`: ``{attempt, at (ISO 8601 UTC), exception_type, message}``."""
    when = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {"attempt": attempt, "at": when.isoformat(), "exception_type": exception_type, "message": message}


def exception_fields(exc: BaseException) -> dict[str, str]:
    """``exception_type``, ``exception_message`` and ``traceback`` of ``exc``, for a :class:`DeadLetter`."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the letter
        message = object.__repr__(exc)
    text = "".join(tb.format_exception(kind, exc, exc.__traceback__))
    return {"exception_type": name, "exception_message": message, "traceback": text}
