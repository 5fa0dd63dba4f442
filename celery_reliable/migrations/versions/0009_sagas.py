"""Saga log: one row per saga (state, current step, context, deadline, lease) and its events.

Revision ID: 0009_sagas
Revises: 0008_event_store
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_sagas"
down_revision = "0008_event_store"
branch_labels = None
depends_on = None

SAGAS = "reliable_sagas"
LOG = "reliable_saga_log"


def upgrade() -> None:
    op.create_table(
        SAGAS,
        sa.Column("saga_id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("failed_step", sa.Integer, nullable=True),
        sa.Column("redrives", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    # What the sweep scans: active sagas by lease, running ones by deadline.
    op.create_index(
        "ix_reliable_sagas_lease",
        SAGAS,
        ["lease_until"],
        postgresql_where=sa.text("state IN ('running', 'compensating')"),
    )
    op.create_index("ix_reliable_sagas_deadline", SAGAS, ["deadline_at"], postgresql_where=sa.text("state = 'running'"))
    op.create_index("ix_reliable_sagas_created", SAGAS, ["created_at"])
    op.create_table(
        LOG,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("saga_id", sa.String(255), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer, nullable=True),
        sa.Column("step_name", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reliable_saga_log_saga", LOG, ["saga_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_reliable_saga_log_saga", table_name=LOG)
    op.drop_table(LOG)
    for name in ("ix_reliable_sagas_created", "ix_reliable_sagas_deadline", "ix_reliable_sagas_lease"):
        op.drop_index(name, table_name=SAGAS)
    op.drop_table(SAGAS)
