"""The event-store tables (created by migration ``0008_event_store``).

- ``reliable_event_streams``: one row per stream and its current version; appends check
  and bump it with one conditional statement (optimistic concurrency).
- ``reliable_events``: one row per event, keyed by ``(stream_id, version)``; ``data`` and
  ``metadata`` are canonical JSON text, ``schema_version`` says which shape ``data`` has.
  ``position`` is the global, commit-ordered position (see :mod:`.position`).
- ``reliable_event_snapshots``: the latest snapshot of a stream's aggregate.
- ``reliable_projections``: each projection's replay checkpoint.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text

from ..schema import metadata

#: Longest stream id (the columns' width); it is also the outbox ordering key.
MAX_STREAM_ID_CHARS = 255
#: Longest event type name.
MAX_TYPE_CHARS = 255
#: Longest event id.
MAX_EVENT_ID_CHARS = 64

streams = Table(
    "reliable_event_streams",
    metadata,
    Column("stream_id", String(MAX_STREAM_ID_CHARS), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "reliable_events",
    metadata,
    Column("stream_id", String(MAX_STREAM_ID_CHARS), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("event_id", String(MAX_EVENT_ID_CHARS), nullable=False),
    Column("position", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("event_type", String(MAX_TYPE_CHARS), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ux_reliable_events_event_id", "event_id", unique=True),
    Index("ux_reliable_events_position", "position", unique=True),
)

snapshots = Table(
    "reliable_event_snapshots",
    metadata,
    Column("stream_id", String(MAX_STREAM_ID_CHARS), primary_key=True),
    Column("aggregate_type", String(255), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

projections = Table(
    "reliable_projections",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("rebuilt_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
