"""Replay dead letters: publish each again once, with a fresh attempt count.

A replay's task id is derived from the letter and its replay count (uuid5), and the row
is marked replayed in the transaction that publishes it, so replaying a letter twice
(or from two processes at once) publishes it once. ``again=True`` publishes a letter that
was replayed before one more time, under a new id.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import update

from .. import _failpoints
from ..schema import dead_letters as table
from .record import DeadLetter, has_unserializable

if TYPE_CHECKING:
    from celery import Celery

    from .store import DeadLetterStore

logger = logging.getLogger(__name__)

#: What happened to one letter: published now, published by an earlier replay, cannot be
#: published, would be published (dry run), or publishing failed (see ``detail``).
Status = Literal["published", "already_replayed", "not_replayable", "dry_run", "failed"]

#: Headers Celery writes itself; a replay gets fresh ones (a new id, ``retries=0``, ...).
PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
        "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
        "replaced_task_nesting", "stamped_headers", "stamps",
    }
)  # fmt: skip

#: The header a replayed message carries: the id of the letter it came from.
REPLAY_HEADER = "reliable_replay_of"

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "celery-reliable:dead-letter-replay")


@dataclass(frozen=True)
class ReplayResult:
    """What replaying one letter did.

    Attributes:
        letter_id: the letter.
        status: see :data:`Status`.
        task_id: the replay's task id (published now, earlier, or in a dry run), if any.
        task_name: the letter's task name.
        detail: why it was not published, or what went wrong.
    """

    letter_id: int
    status: Status
    task_id: str | None = None
    task_name: str | None = None
    detail: str | None = None

    @property
    def published(self) -> bool:
        """Whether this call published the letter."""
        return self.status == "published"


def replay_task_id(letter: DeadLetter, replay_count: int) -> str:
    """The task id of replay number ``replay_count`` (from 0) of ``letter``: the same on every machine."""
    return str(uuid.uuid5(_NAMESPACE, f"{letter.id}:{letter.dedup_key}:{replay_count}"))


def replay(
    store: DeadLetterStore,
    app: Celery,
    letter_id: int | None = None,
    task: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
    again: bool = False,
    page: int = 100,
) -> list[ReplayResult]:
    """Publish one letter (by id), or every letter of a task name and/or reason, again.

    Each letter goes to its queue through ``app.send_task`` with a new task id and
    ``retries=0``; its row records the replay (``replayed_at``, ``replay_task_id``,
    ``replay_count``). A letter that was replayed before is reported with the earlier
    task id and not published, unless ``again``. Letters that cannot be replayed, and
    letters whose publish fails, are reported and the batch goes on.

    Order and crashes: the row is updated first (``UPDATE … WHERE replay_count = n``, which
    holds the row lock, or SQLite's write lock, until commit), then the message is
    published, then the transaction commits. A concurrent replay of the same letter waits
    on that lock and then finds ``replay_count`` moved on, so it publishes nothing. If
    publishing fails, the update rolls back. If the process dies after publishing and
    before the commit, the row stays unmarked and the next replay publishes the letter
    again under the *same* task id (the id depends only on the letter and ``n``): a
    duplicate message, never a lost one. A task with an idempotency key runs its effect
    once anyway. (Committing first and publishing after would instead risk a letter
    marked replayed whose message was never sent.)

    Args:
        store: the store holding the letters.
        app: the Celery app to publish with.
        letter_id: replay this letter.
        task: replay the letters of this task name.
        reason: replay the letters of this reason (with ``task``: of both).
        dry_run: report what would be published; publish and change nothing.
        again: publish letters that were replayed before once more.
        page: letters read per query.

    Returns:
        one :class:`ReplayResult` per letter, in id order.

    Raises:
        ValueError: when both or neither of ``letter_id`` and ``task``/``reason`` are given.
        DeadLetterNotFound: when no letter has ``letter_id``.
    """
    if (letter_id is None) == (task is None and reason is None):
        raise ValueError("replay one letter by id, or the letters of a task name and/or reason")
    if letter_id is not None:
        return [_guarded(store, app, store.get(letter_id), dry_run, again)]
    results: list[ReplayResult] = []
    after: int | None = None
    while True:
        letters = store.list(task=task, reason=reason, after_id=after, limit=page)
        results.extend(_guarded(store, app, letter, dry_run, again) for letter in letters)
        if len(letters) < page:
            return results
        after = letters[-1].id


def _guarded(store: DeadLetterStore, app: Celery, letter: DeadLetter, dry_run: bool, again: bool) -> ReplayResult:
    try:
        return replay_one(store, app, letter, dry_run=dry_run, again=again)
    except Exception as exc:
        logger.exception("celery-reliable: replaying dead letter %s failed", letter.id)
        return ReplayResult(letter.id or 0, "failed", None, letter.task_name, f"{type(exc).__name__}: {exc}")


def replay_one(
    store: DeadLetterStore, app: Celery, letter: DeadLetter, dry_run: bool = False, again: bool = False
) -> ReplayResult:
    """Replay one letter read from ``store`` (see :func:`replay`).

    Raises:
        Exception: whatever publishing raised (the row is then left as it was).
    """
    assert letter.id is not None, "replay a letter read from the store"
    name = letter.task_name
    why = letter.why_not_replayable()
    if why is not None:
        return ReplayResult(letter.id, "not_replayable", None, name, why)
    if letter.replayed_at is not None and not again:
        detail = f"replayed at {letter.replayed_at.isoformat()}; again=True (--again) publishes it once more"
        return ReplayResult(letter.id, "already_replayed", letter.replay_task_id, name, detail)
    new_id = replay_task_id(letter, letter.replay_count)
    if dry_run:
        return ReplayResult(letter.id, "dry_run", new_id, name, f"would publish to queue {letter.queue or '(default)'}")
    with store.engine.begin() as conn:
        marked = conn.execute(
            update(table)
            .where(table.c.id == letter.id, table.c.replay_count == letter.replay_count)
            .values(replayed_at=datetime.now(timezone.utc), replay_task_id=new_id, replay_count=letter.replay_count + 1)
        ).rowcount
        if marked:
            _publish(app, letter, new_id)
            _failpoints.hit("dlq_after_publish", new_id, str(app.conf.get("reliable_redis_url") or ""))
    if marked:
        logger.info("celery-reliable: dead letter %s (%s) replayed as %s", letter.id, name, new_id)
        return ReplayResult(letter.id, "published", new_id, name)
    current = store.get(letter.id)
    return ReplayResult(letter.id, "already_replayed", current.replay_task_id, name, "replayed concurrently")


def _publish(app: Celery, letter: DeadLetter, task_id: str) -> None:
    stored = letter.headers if isinstance(letter.headers, dict) else {}
    headers = {k: v for k, v in stored.items() if k not in PROTOCOL_HEADERS and not has_unserializable(v)}
    headers[REPLAY_HEADER] = letter.id
    options: dict[str, Any] = {"queue": letter.queue} if letter.queue else {}
    app.send_task(
        letter.task_name,
        args=list(letter.args or ()),
        kwargs=dict(letter.kwargs or {}),
        task_id=task_id,
        retries=0,
        headers=headers,
        add_to_parent=False,
        **options,
    )
