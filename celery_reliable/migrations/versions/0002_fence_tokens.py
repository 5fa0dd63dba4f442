"""Fencing-token ranges reserved per lock name.

Revision ID: 0002_fence_tokens
Revises: 0001_idempotency
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_fence_tokens"
down_revision = "0001_idempotency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_fence_tokens",
        sa.Column("name", sa.String(1024), primary_key=True),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reliable_fence_tokens")
