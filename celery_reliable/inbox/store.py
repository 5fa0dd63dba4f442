"""The consumer inbox table: one row per message a consumer processed.

A consumer records the message's id first in the transaction that writes its effects.
The row and the effects commit together, so a message delivered twice changes state
once: the second delivery finds the row (waiting for the first transaction if it is
still open) and rolls back.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Column, DateTime, Index, String, Table, delete, insert, select, tuple_
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import duration_ms
from ..jsoncodec import sha256_hex
from ..schema import metadata
from ..sessions import connection_of

#: How long a processed message id is remembered unless told otherwise: longer than any
#: redelivery (broker visibility timeouts, outbox relays catching up after an outage).
DEFAULT_TTL = timedelta(days=7)

#: Longest message id stored as written; longer ones are stored as ``#<sha256>``.
MAX_ID_CHARS = 200

#: One row per (consumer, message id) processed within its TTL (created by migration 0006).
inbox = Table(
    "reliable_inbox",
    metadata,
    Column("consumer", String(255), primary_key=True),
    Column("message_id", String(255), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_reliable_inbox_expires_at", "expires_at"),
)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def stored_id(message_id: str) -> str:
    """The form a message id is stored in: as written, or hashed when too long or not storable.

    Raises:
        ValueError: for an empty id.
    """
    if not isinstance(message_id, str) or not message_id:
        raise ValueError(f"a message id must be a non-empty str, got {message_id!r}")
    if len(message_id) <= MAX_ID_CHARS and "\x00" not in message_id and message_id.isprintable():
        return message_id
    return "#" + sha256_hex(message_id)


def record(session: Session | Connection, consumer: str, message_id: str, ttl: float | timedelta = DEFAULT_TTL) -> bool:
    """Record that ``consumer`` processes ``message_id``, in the caller's transaction.

    Call it first in the transaction that writes the consumer's effects. An expired row
    of the same id is replaced. While another transaction holding the same id is open,
    this call waits for it (the database's unique index), so two concurrent deliveries
    cannot both proceed.

    Args:
        session: the SQLAlchemy session (or connection) whose transaction writes the effects.
        consumer: the consumer's name (each consumer has its own inbox).
        message_id: the message's id (event id, outbox message id, task id).
        ttl: how long the id is remembered (seconds or timedelta).

    Returns:
        ``True`` if recorded (process the message), ``False`` if the consumer already
        processed it (roll back and stop; nothing else was written by this call).

    Raises:
        ValueError: for an empty consumer or message id, or a TTL under one second.
    """
    if not consumer:
        raise ValueError("the consumer name must be a non-empty str")
    ttl_ms = duration_ms("inbox_ttl", ttl)
    if ttl_ms < 1000:
        raise ValueError(f"inbox_ttl must be at least one second, got {ttl!r}")
    conn = connection_of(session)
    now = _utcnow()
    values = {
        "consumer": consumer,
        "message_id": stored_id(message_id),
        "processed_at": now,
        "expires_at": now + timedelta(milliseconds=ttl_ms),
    }
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = upsert(inbox).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[inbox.c.consumer, inbox.c.message_id],
            set_={"processed_at": stmt.excluded.processed_at, "expires_at": stmt.excluded.expires_at},
            where=inbox.c.expires_at <= now,
        ).returning(inbox.c.message_id)
        return conn.execute(stmt).first() is not None
    # Other databases: replace an expired leftover, then insert under a savepoint.
    conn.execute(
        delete(inbox).where(
            inbox.c.consumer == consumer, inbox.c.message_id == values["message_id"], inbox.c.expires_at <= now
        )
    )
    try:
        with conn.begin_nested():
            conn.execute(insert(inbox).values(**values))
    except IntegrityError:
        return False
    return True


def seen(conn: Session | Connection, consumer: str, message_id: str) -> bool:
    """Whether ``consumer`` committed ``message_id`` and it has not expired."""
    row = (
        connection_of(conn)
        .execute(
            select(inbox.c.message_id).where(
                inbox.c.consumer == consumer,
                inbox.c.message_id == stored_id(message_id),
                inbox.c.expires_at > _utcnow(),
            )
        )
        .first()
    )
    return row is not None


def delete_expired(engine: Engine, batch: int = 1000) -> int:
    """Delete expired inbox rows in batches of ``batch``; returns how many went."""
    total = 0
    while True:
        with engine.begin() as conn:
            expired = select(inbox.c.consumer, inbox.c.message_id).where(inbox.c.expires_at <= _utcnow()).limit(batch)
            n = conn.execute(delete(inbox).where(tuple_(inbox.c.consumer, inbox.c.message_id).in_(expired))).rowcount
        total += n
        if n < batch:
            return total
