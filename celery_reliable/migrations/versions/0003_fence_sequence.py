"""The sequence PostgresAdvisoryLock draws fencing tokens from (PostgreSQL only).

Revision ID: 0003_fence_sequence
Revises: 0002_fence_tokens
"""

from __future__ import annotations

from alembic import op

revision = "0003_fence_sequence"
down_revision = "0002_fence_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE IF NOT EXISTS reliable_fence_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS reliable_fence_seq")
