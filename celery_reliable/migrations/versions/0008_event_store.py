"""Event store: streams with versions, events with a commit-ordered global position, snapshots,
and projection checkpoints.

Revision ID: 0008_event_store
Revises: 0007_http_idempotency

``reliable_events.position`` is NULL while the appending transaction runs. On PostgreSQL a
deferred constraint trigger numbers the transaction's events when it commits, under a
transaction-scoped advisory lock, so positions become visible in commit order and a reader
of "events after position P" can never skip a gap that fills in later (see
``celery_reliable.eventstore.position``). On SQLite, where writers are serialised anyway, the
store numbers events as it inserts them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_event_store"
down_revision = "0007_http_idempotency"
branch_labels = None
depends_on = None

STREAMS = "reliable_event_streams"
EVENTS = "reliable_events"
SNAPSHOTS = "reliable_event_snapshots"
PROJECTIONS = "reliable_projections"
SEQUENCE = "reliable_events_position_seq"
FUNCTION = "reliable_events_number"
TRIGGER = "reliable_events_number_on_commit"
#: The advisory-lock id numbering commits serialise on (signed 64-bit; also in
#: ``celery_reliable.eventstore.position.POSITION_LOCK_ID``).
POSITION_LOCK_ID = 7_308_332_423_715_931_461

_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({POSITION_LOCK_ID});
    UPDATE {EVENTS} SET position = nextval('{SEQUENCE}')
     WHERE event_id = NEW.event_id AND position IS NULL;
    RETURN NULL;
END
$$
"""

_TRIGGER_SQL = f"""
CREATE CONSTRAINT TRIGGER {TRIGGER}
AFTER INSERT ON {EVENTS}
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()
"""


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    op.create_table(
        STREAMS,
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        EVENTS,
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("position", big, nullable=True),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_reliable_events_event_id", EVENTS, ["event_id"], unique=True)
    op.create_index("ux_reliable_events_position", EVENTS, ["position"], unique=True)
    op.create_table(
        SNAPSHOTS,
        sa.Column("stream_id", sa.String(255), primary_key=True),
        sa.Column("aggregate_type", sa.String(255), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        PROJECTIONS,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE SEQUENCE {SEQUENCE} AS bigint MINVALUE 1")
        op.execute(_FUNCTION_SQL)
        op.execute(_TRIGGER_SQL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {EVENTS}")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
        op.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
    op.drop_table(PROJECTIONS)
    op.drop_table(SNAPSHOTS)
    op.drop_index("ux_reliable_events_position", table_name=EVENTS)
    op.drop_index("ux_reliable_events_event_id", table_name=EVENTS)
    op.drop_table(EVENTS)
    op.drop_table(STREAMS)
