"""Transactional outbox: messages written in the business transaction, published by relays.

Revision ID: 0005_outbox
Revises: 0004_dead_letters
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_outbox"
down_revision = "0004_dead_letters"
branch_labels = None
depends_on = None

TABLE = "reliable_outbox"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("kwargs", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("ordering_key", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ux_reliable_outbox_message_id", TABLE, ["message_id"], unique=True)
    # What relays scan: pending rows in id order (published rows are most of the table).
    pending = sa.text("state = 'pending'")
    op.create_index("ix_reliable_outbox_pending", TABLE, ["id"], postgresql_where=pending, sqlite_where=pending)
    # Per-key ordering: "is a lower row of this key still pending or dead?"
    unsettled = sa.text("state IN ('pending', 'dead')")
    op.create_index(
        "ix_reliable_outbox_key", TABLE, ["ordering_key", "id"], postgresql_where=unsettled, sqlite_where=unsettled
    )
    # Retention cleanup of published rows.
    published = sa.text("state = 'published'")
    op.create_index(
        "ix_reliable_outbox_published_at", TABLE, ["published_at"], postgresql_where=published, sqlite_where=published
    )


def downgrade() -> None:
    for name in (
        "ix_reliable_outbox_published_at",
        "ix_reliable_outbox_key",
        "ix_reliable_outbox_pending",
        "ux_reliable_outbox_message_id",
    ):
        op.drop_index(name, table_name=TABLE)
    op.drop_table(TABLE)
