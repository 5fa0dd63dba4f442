"""The tables celery-reliable keeps in the database (created by migrations only)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Identity, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

#: One row per idempotency key that committed an effect or completed.
#: ``state`` is ``committed`` (effects committed by ``self.transaction()``, result not
#: yet stored) or ``completed`` (result stored). ``result`` is canonical JSON text.
idempotency = Table(
    "reliable_idempotency",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("task_name", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("task_id", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("result", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_reliable_idempotency_expires_at", "expires_at"),
)

#: Fencing-token ranges reserved per lock name. Every token Redis hands out for a name
#: is at or below ``reserved``, so after Redis loses its data, new tokens start above it.
fence_tokens = Table(
    "reliable_fence_tokens",
    metadata,
    Column("name", String(1024), primary_key=True),
    Column("reserved", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Tasks that will not run again by themselves (issue 4): one row per dead task id, or per
#: malformed message body (``dedup_key`` ``body:<sha256>``). JSON columns hold canonical
#: JSON text; ``raw_body`` holds base64 when ``raw_body_encoding`` is ``base64``.
dead_letters = Table(
    "reliable_dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("dedup_key", String(512), nullable=False),
    Column("task_id", String(255), nullable=True),
    Column("task_name", String(255), nullable=True),
    Column("queue", String(255), nullable=True),
    Column("args", Text, nullable=True),
    Column("kwargs", Text, nullable=True),
    Column("headers", Text, nullable=True),
    Column("raw_body", Text, nullable=True),
    Column("raw_body_encoding", String(16), nullable=True),
    Column("replayable", Boolean, nullable=False),
    Column("exception_type", String(255), nullable=True),
    Column("exception_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("history", Text, nullable=False),
    Column("first_failed_at", DateTime(timezone=True), nullable=False),
    Column("last_failed_at", DateTime(timezone=True), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
    Column("replay_task_id", String(255), nullable=True),
    Column("replay_count", Integer, nullable=False),
    Index("ux_reliable_dead_letters_dedup_key", "dedup_key", unique=True),
    Index("ix_reliable_dead_letters_task_name", "task_name", "id"),
    Index("ix_reliable_dead_letters_reason", "reason", "id"),
    Index("ix_reliable_dead_letters_created_at", "created_at"),
    sqlite_autoincrement=True,
)
