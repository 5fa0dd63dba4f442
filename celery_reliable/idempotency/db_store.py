"""The durable tier: idempotency records in the database (the truth)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..schema import idempotency
from .records import COMMITTED, COMPLETED, Record


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(timezone.utc)


def _record(row: object) -> Record:
    return Record(
        fingerprint=row.fingerprint,  # type: ignore[attr-defined]
        task_id=row.task_id,  # type: ignore[attr-defined]
        state=row.state,  # type: ignore[attr-defined]
        result_json=row.result,  # type: ignore[attr-defined]
    )


def fetch(conn: Connection, key: str) -> Record | None:
    """Return the unexpired record of ``key``, if any."""
    row = conn.execute(select(idempotency).where(idempotency.c.key == key, idempotency.c.expires_at > utcnow())).first()
    return None if row is None else _record(row)


def _insert(
    conn: Connection, key: str, task_name: str, fingerprint: str, task_id: str, result_json: str | None, ttl_ms: int
) -> bool:
    """Insert a record, replacing an expired one; ``False`` if a live record of the key exists.

    One statement on PostgreSQL and SQLite (``INSERT … ON CONFLICT DO UPDATE … WHERE
    expired``); a concurrent inserter of the same key waits for the first to finish.
    """
    now = utcnow()
    values = {
        "key": key,
        "task_name": task_name,
        "fingerprint": fingerprint,
        "task_id": task_id,
        "state": COMMITTED if result_json is None else COMPLETED,
        "result": result_json,
        "created_at": now,
        "completed_at": None if result_json is None else now,
        "expires_at": now + timedelta(milliseconds=ttl_ms),
    }
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = upsert(idempotency).values(**values)
        returning = stmt.on_conflict_do_update(
            index_elements=[idempotency.c.key],
            set_={k: stmt.excluded[k] for k in values if k != "key"},
            where=idempotency.c.expires_at <= now,
        ).returning(idempotency.c.key)
        return conn.execute(returning).first() is not None
    # Other databases: replace an expired leftover, then insert under a savepoint.
    conn.execute(delete(idempotency).where(idempotency.c.key == key, idempotency.c.expires_at <= now))
    try:
        with conn.begin_nested():
            conn.execute(insert(idempotency).values(**values))
    except IntegrityError:
        return False
    return True


def insert_committed(conn: Connection, key: str, task_name: str, fingerprint: str, task_id: str, ttl_ms: int) -> bool:
    """Insert the ``committed`` record inside the caller's transaction.

    Returns:
        ``True`` if inserted, ``False`` if an unexpired record of the key exists.
    """
    return _insert(conn, key, task_name, fingerprint, task_id, None, ttl_ms)


def complete_in(conn: Connection, key: str, task_id: str, result_json: str) -> None:
    """Mark our ``committed`` record completed with its result, in the caller's transaction."""
    conn.execute(
        update(idempotency)
        .where(idempotency.c.key == key, idempotency.c.task_id == task_id)
        .values(state=COMPLETED, result=result_json, completed_at=utcnow())
    )


def store_result(
    engine: Engine,
    key: str,
    task_name: str,
    fingerprint: str,
    task_id: str,
    result_json: str,
    ttl_ms: int,
    committed: bool,
) -> Record:
    """Store the result of ``key``; returns the record that stands (ours or an earlier one).

    ``committed`` says this execution already inserted the ``committed`` row.
    """
    with engine.begin() as conn:
        if committed:
            complete_in(conn, key, task_id, result_json)
        elif not _insert(conn, key, task_name, fingerprint, task_id, result_json, ttl_ms):
            existing = fetch(conn, key)
            if existing is None:  # pragma: no cover - expired between the two statements
                raise RuntimeError(f"idempotency record {key!r} vanished while storing its result")
            return existing
    return Record(fingerprint, task_id, COMPLETED, result_json)


def delete_expired(engine: Engine, batch: int) -> int:
    """Delete expired records in batches of ``batch`` rows; returns how many went."""
    total = 0
    while True:
        with engine.begin() as conn:
            keys = select(idempotency.c.key).where(idempotency.c.expires_at <= utcnow()).limit(batch)
            n = conn.execute(delete(idempotency).where(idempotency.c.key.in_(keys.scalar_subquery()))).rowcount
        total += n
        if n < batch:
            return total


def live_records(engine: Engine, batch: int) -> Iterator[tuple[str, Record, int]]:
    """Yield ``(key, record, ttl_ms)`` for every unexpired record, in key order, paged."""
    after = ""
    while True:
        now = utcnow()
        with engine.connect() as conn:
            rows = conn.execute(
                select(idempotency)
                .where(idempotency.c.key > after, idempotency.c.expires_at > now)
                .order_by(idempotency.c.key)
                .limit(batch)
            ).all()
        for row in rows:
            expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
            ttl_ms = int((expires - now).total_seconds() * 1000)
            yield row.key, _record(row), max(ttl_ms, 1)
        if len(rows) < batch:
            return
        after = rows[-1].key
