"""Snapshots: an aggregate's state at a version, so loading replays only later events.

One row per stream holds the latest snapshot (JSON state, the aggregate version it was
taken at, the aggregate type and the snapshot's own shape version). A snapshot is only a
cache of a replay: deleting it changes nothing but load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from .. import jsoncodec
from ..sessions import connection_of
from .events import check_stream_id
from .model import snapshots

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot.

    Attributes:
        stream_id: the stream.
        aggregate_type: the aggregate's ``aggregate_type``.
        version: the stream version the state includes.
        schema_version: the shape of ``state``.
        state: the JSON state.
    """

    stream_id: str
    aggregate_type: str
    version: int
    schema_version: int
    state: dict[str, Any]


def write_snapshot(session: Session | Connection, snapshot: Snapshot) -> bool:
    """Store ``snapshot`` unless the stream already has one at the same or a later version.

    Returns:
        Whether it was stored.

    Raises:
        SerializationError: the state is not JSON.
    """
    check_stream_id(snapshot.stream_id)
    state = jsoncodec.dumps(snapshot.state, where=f"{snapshot.aggregate_type} snapshot")
    conn = connection_of(session)
    from .store import _upsert

    upsert = _upsert(conn)
    values = {
        "stream_id": snapshot.stream_id,
        "aggregate_type": snapshot.aggregate_type,
        "version": snapshot.version,
        "schema_version": snapshot.schema_version,
        "state": state,
        "created_at": datetime.now(timezone.utc),
    }
    stmt = upsert(snapshots).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[snapshots.c.stream_id],
        set_={k: stmt.excluded[k] for k in values if k != "stream_id"},
        where=snapshots.c.version < stmt.excluded.version,
    ).returning(snapshots.c.version)
    return conn.execute(stmt).first() is not None


def read_snapshot(session: Session | Connection, stream_id: str) -> Snapshot | None:
    """The stream's latest snapshot, or ``None``."""
    check_stream_id(stream_id)
    row = connection_of(session).execute(select(snapshots).where(snapshots.c.stream_id == stream_id)).first()
    if row is None:
        return None
    return Snapshot(
        row.stream_id, row.aggregate_type, int(row.version), int(row.schema_version), jsoncodec.loads(row.state)
    )


def delete_snapshot(session: Session | Connection, stream_id: str) -> bool:
    """Delete the stream's snapshot; returns whether there was one."""
    check_stream_id(stream_id)
    return bool(connection_of(session).execute(delete(snapshots).where(snapshots.c.stream_id == stream_id)).rowcount)
