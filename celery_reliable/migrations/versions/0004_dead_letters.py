"""Dead letters: tasks that will not run again by themselves.

Revision ID: 0004_dead_letters
Revises: 0003_fence_sequence
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_dead_letters"
down_revision = "0003_fence_sequence"
branch_labels = None
depends_on = None

TABLE = "reliable_dead_letters"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("dedup_key", sa.String(512), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=True),
        sa.Column("task_name", sa.String(255), nullable=True),
        sa.Column("queue", sa.String(255), nullable=True),
        sa.Column("args", sa.Text, nullable=True),
        sa.Column("kwargs", sa.Text, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("raw_body", sa.Text, nullable=True),
        sa.Column("raw_body_encoding", sa.String(16), nullable=True),
        sa.Column("replayable", sa.Boolean, nullable=False),
        sa.Column("exception_type", sa.String(255), nullable=True),
        sa.Column("exception_message", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("history", sa.Text, nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replay_task_id", sa.String(255), nullable=True),
        sa.Column("replay_count", sa.Integer, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ux_reliable_dead_letters_dedup_key", TABLE, ["dedup_key"], unique=True)
    op.create_index("ix_reliable_dead_letters_task_name", TABLE, ["task_name", "id"])
    op.create_index("ix_reliable_dead_letters_reason", TABLE, ["reason", "id"])
    op.create_index("ix_reliable_dead_letters_created_at", TABLE, ["created_at"])


def downgrade() -> None:
    for name in (
        "ix_reliable_dead_letters_created_at",
        "ix_reliable_dead_letters_reason",
        "ix_reliable_dead_letters_task_name",
        "ux_reliable_dead_letters_dedup_key",
    ):
        op.drop_index(name, table_name=TABLE)
    op.drop_table(TABLE)
