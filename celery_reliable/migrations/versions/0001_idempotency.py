"""Idempotency records.

Revision ID: 0001_idempotency
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_idempotency"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_idempotency",
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reliable_idempotency_expires_at", "reliable_idempotency", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_reliable_idempotency_expires_at", table_name="reliable_idempotency")
    op.drop_table("reliable_idempotency")
