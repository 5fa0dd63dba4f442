"""The dead-letter store: tasks that will not run again by themselves, kept in the database."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..schema import dead_letters as table
from .codec import from_row, to_values, utc
from .record import REASONS, DeadLetter, DeadLetterNotFound

if TYPE_CHECKING:
    from celery import Celery

    from .replay import ReplayResult


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _seconds(value: timedelta | float, what: str) -> timedelta:
    delta = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if delta < timedelta(0):
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return delta


class DeadLetterStore:
    """Dead letters in the database behind ``engine`` (PostgreSQL or SQLite).

    Nothing is dropped silently: there is no cap on the number of letters; :meth:`purge`
    deletes old ones when asked (the ``celery_reliable.purge_dead_letters`` beat task does,
    after ``reliable_dead_letter_retention``) and :meth:`count` shows what is kept.

    Args:
        engine: a migrated database (``celery -A proj reliable migrate``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, letter: DeadLetter) -> tuple[int, bool]:
        """Store ``letter``, once per ``dedup_key``.

        A worker that dies after storing a letter and before acking its message stores it
        again on redelivery: the second call finds the first row and changes nothing. One
        statement decides (``INSERT … ON CONFLICT DO NOTHING``), so concurrent callers with
        the same key get one row between them.

        Returns:
            ``(id, created)``: the row's id, and whether this call created it.
        """
        values = to_values(letter, _utcnow())
        with self.engine.begin() as conn:
            row_id = self._insert(conn, values)
            if row_id is not None:
                return row_id, True
            found = conn.execute(select(table.c.id).where(table.c.dedup_key == values["dedup_key"])).scalar_one()
        return int(found), False

    @staticmethod
    def _insert(conn: Connection, values: dict[str, Any]) -> int | None:
        """Insert the row; its id, or ``None`` when a row with its ``dedup_key`` exists."""
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
            stmt = upsert(table).values(**values).on_conflict_do_nothing(index_elements=[table.c.dedup_key])
            row_id = conn.execute(stmt.returning(table.c.id)).scalar()
            return None if row_id is None else int(row_id)
        try:  # other databases: a savepoint around a plain insert
            with conn.begin_nested():
                result = conn.execute(insert(table).values(**values))
        except IntegrityError:
            return None
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def get(self, letter_id: int) -> DeadLetter:
        """The letter with id ``letter_id``.

        Raises:
            DeadLetterNotFound: when there is none.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == letter_id)).first()
        if row is None:
            raise DeadLetterNotFound(letter_id)
        return from_row(row)

    def list(
        self,
        task: str | None = None,
        reason: str | None = None,
        since: datetime | timedelta | None = None,
        limit: int = 100,
        after_id: int | None = None,
        replayed: bool | None = None,
    ) -> builtins.list[DeadLetter]:
        """Letters in id order (oldest first), one page at a time.

        Args:
            task: only letters of this task name.
            reason: only letters of this reason (one of :data:`REASONS`).
            since: only letters stored at or after this time (a timedelta: that long ago).
            limit: the page size.
            after_id: only letters with a larger id (the last id of the previous page).
            replayed: ``True`` or ``False``: only letters replayed, or never replayed.

        Returns:
            at most ``limit`` letters.

        Raises:
            ValueError: for an unknown reason or a limit below 1.
        """
        if reason is not None and reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        query = select(table).order_by(table.c.id).limit(limit)
        if task is not None:
            query = query.where(table.c.task_name == task)
        if reason is not None:
            query = query.where(table.c.reason == reason)
        if since is not None:
            cutoff = _utcnow() - _seconds(since, "since") if not isinstance(since, datetime) else utc(since)
            query = query.where(table.c.created_at >= cutoff)
        if after_id is not None:
            query = query.where(table.c.id > after_id)
        if replayed is not None:
            query = query.where(table.c.replayed_at.is_not(None) if replayed else table.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return [from_row(row) for row in conn.execute(query)]

    def count(self, by: str = "reason") -> dict[str, int]:
        """How many letters there are per ``reason`` or per ``task`` (``<unknown>`` for no name).

        Raises:
            ValueError: for another ``by``.
        """
        if by not in ("reason", "task"):
            raise ValueError(f"count by 'reason' or 'task', not {by!r}")
        column = table.c.reason if by == "reason" else table.c.task_name
        with self.engine.connect() as conn:
            rows = conn.execute(select(column, func.count()).group_by(column)).all()
        return {("<unknown>" if key is None else key): int(n) for key, n in sorted(rows, key=lambda r: str(r[0]))}

    def total(self, older_than: timedelta | float | None = None) -> int:
        """How many letters there are (only those stored more than ``older_than`` ago, if given)."""
        query = select(func.count()).select_from(table)
        if older_than is not None:
            query = query.where(table.c.created_at < _utcnow() - _seconds(older_than, "older_than"))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def purge(self, older_than: timedelta | float, batch: int = 1000) -> int:
        """Delete letters stored more than ``older_than`` ago, ``batch`` rows per transaction.

        Returns:
            how many letters were deleted.

        Raises:
            ValueError: for a negative age or a batch below 1.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch!r}")
        cutoff = _utcnow() - _seconds(older_than, "older_than")
        total = 0
        while True:
            with self.engine.begin() as conn:
                ids = select(table.c.id).where(table.c.created_at < cutoff).order_by(table.c.created_at).limit(batch)
                n = conn.execute(delete(table).where(table.c.id.in_(ids.scalar_subquery()))).rowcount
            total += n
            if n < batch:
                return total

    def replay(
        self,
        app: Celery,
        id: int | None = None,
        task: str | None = None,
        dry_run: bool = False,
        *,
        reason: str | None = None,
        again: bool = False,
    ) -> builtins.list[ReplayResult]:
        """Publish one letter (``id``), or the letters of a ``task`` and/or ``reason``, again.

        Each goes to its queue with a new task id (uuid5 of the letter and its replay
        count) and ``retries=0``; replaying a letter twice publishes it once unless
        ``again``. A process that dies after publishing and before marking the row leaves
        it unmarked, so the next replay publishes a duplicate under the same task id (never
        a lost replay). Details in :func:`celery_reliable.deadletter.replay.replay`.

        Returns:
            one :class:`~celery_reliable.deadletter.replay.ReplayResult` per letter.

        Raises:
            ValueError: when both or neither of ``id`` and ``task``/``reason`` are given.
            DeadLetterNotFound: when no letter has ``id``.
        """
        from .replay import replay

        return replay(self, app, letter_id=id, task=task, reason=reason, dry_run=dry_run, again=again)
