"""HTTP idempotency keys (Stripe-style ``Idempotency-Key``) and their stored responses.

Revision ID: 0007_http_idempotency
Revises: 0006_inbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_http_idempotency"
down_revision = "0006_inbox"
branch_labels = None
depends_on = None

TABLE = "reliable_http_idempotency"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("endpoint", sa.String(512), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("body", sa.Text, nullable=True),
        sa.Column("body_encoding", sa.String(16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reliable_http_idempotency_expires_at", TABLE, ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_reliable_http_idempotency_expires_at", table_name=TABLE)
    op.drop_table(TABLE)
