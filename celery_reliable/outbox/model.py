"""The outbox table (created by migration ``0005_outbox``) and the states of its rows.

One row per message a business transaction wants published::

    pending ──relay publishes──▶ published ──retention──▶ (deleted)
       │  ▲
       │  └── publish failed: attempts + 1, next_attempt_at = now + backoff
       └──── attempts exhausted ──▶ dead ──requeue_dead()──▶ pending
                                     └──── discard_dead()──▶ (deleted)

``message_id`` is the task id the message is published with, so a consumer deduplicates
on ``self.request.id``. ``args``, ``kwargs`` and ``options`` are canonical JSON text
(:mod:`celery_reliable.jsoncodec`, never pickle). ``next_attempt_at`` is NULL until a
publish fails: a new row is due at once whatever the clocks of the writer and the relays
say. Rows are claimed in ``id`` order with ``FOR UPDATE SKIP LOCKED``; there is no
high-water mark, so a row whose transaction commits after a higher id is still claimed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, Integer, String, Table, Text, text

from ..schema import metadata

#: Waiting to be published (also while backing off after a failed publish).
PENDING = "pending"
#: Accepted by the broker; deleted after ``reliable_outbox_retention``.
PUBLISHED = "published"
#: Could not be published in ``reliable_outbox_max_attempts`` attempts; blocks its ordering key.
DEAD = "dead"

#: The PostgreSQL channel :func:`~celery_reliable.outbox.enqueue` notifies in listen mode.
CHANNEL = "reliable_outbox"

outbox = Table(
    "reliable_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("message_id", String(255), nullable=False),
    Column("task_name", String(255), nullable=False),
    Column("args", Text, nullable=False),
    Column("kwargs", Text, nullable=False),
    Column("options", Text, nullable=False),
    Column("ordering_key", String(255), nullable=True),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index("ux_reliable_outbox_message_id", "message_id", unique=True),
    Index(
        "ix_reliable_outbox_pending",
        "id",
        postgresql_where=text("state = 'pending'"),
        sqlite_where=text("state = 'pending'"),
    ),
    Index(
        "ix_reliable_outbox_key",
        "ordering_key",
        "id",
        postgresql_where=text("state IN ('pending', 'dead')"),
        sqlite_where=text("state IN ('pending', 'dead')"),
    ),
    Index(
        "ix_reliable_outbox_published_at",
        "published_at",
        postgresql_where=text("state = 'published'"),
        sqlite_where=text("state = 'published'"),
    ),
    sqlite_autoincrement=True,
)
