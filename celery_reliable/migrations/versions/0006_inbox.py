"""Consumer inbox: message ids a consumer processed, committed with its effects.

Revision ID: 0006_inbox
Revises: 0005_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_inbox"
down_revision = "0005_outbox"
branch_labels = None
depends_on = None

TABLE = "reliable_inbox"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("consumer", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(255), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reliable_inbox_expires_at", TABLE, ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_reliable_inbox_expires_at", table_name=TABLE)
    op.drop_table(TABLE)
