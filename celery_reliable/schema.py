"""The tables celery-reliable keeps in the database (created by migrations only)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, Text

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
