"""Dead letters: tasks that will not run again by themselves, kept for inspection and replay.

The store (:class:`DeadLetterStore`) keeps one row per letter in the database; it lists,
counts, purges and replays them. ``celery -A proj reliable dlq ...`` does the same from
a shell.
"""

from __future__ import annotations

from .record import (
    REASONS,
    UNSERIALIZABLE,
    DeadLetter,
    DeadLetterNotFound,
    body_dedup_key,
    dedup_key_for,
    exception_fields,
    history_entry,
)
from .replay import ReplayResult, replay_task_id
from .store import DeadLetterStore

__all__ = [
    "REASONS",
    "UNSERIALIZABLE",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterStore",
    "ReplayResult",
    "body_dedup_key",
    "dedup_key_for",
    "exception_fields",
    "history_entry",
    "replay_task_id",
]
