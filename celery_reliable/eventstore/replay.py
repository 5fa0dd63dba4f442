"""Replaying the store into a projection: catch up from its checkpoint, or rebuild from 0.

Both read with :func:`~celery_reliable.eventstore.read_all`, in commit order, and apply
through :meth:`Projection.apply`, so events the live consumer applied are skipped by the
inbox. The checkpoint (``reliable_projections``) is the last position replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .. import inbox
from ..sessions import connection_of
from .model import projections
from .projection import Projection, get_projection, projection_names
from .store import READ_BATCH, _upsert, head_position, read_all

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did.

    Attributes:
        projection: the projection's name.
        read: events read from the store.
        applied: events applied (read minus unhandled types and events applied before).
        position: the checkpoint after the replay.
    """

    projection: str
    read: int
    applied: int
    position: int


def _set_position(conn: Connection, name: str, position: int, rebuilt: bool) -> None:
    now = datetime.now(timezone.utc)
    values: dict[str, Any] = {"name": name, "position": position, "updated_at": now}
    if rebuilt:
        values["rebuilt_at"] = now
    stmt = _upsert(conn)(projections).values(**values)
    changes: dict[str, Any] = {k: v for k, v in values.items() if k != "name"}
    if not rebuilt:  # a catch-up never moves the checkpoint back past a rebuild that ran meanwhile
        changes["position"] = case(
            (projections.c.position > stmt.excluded.position, projections.c.position), else_=stmt.excluded.position
        )
    stmt = stmt.on_conflict_do_update(index_elements=[projections.c.name], set_=changes)
    conn.execute(stmt)


def checkpoint(session: Session | Connection, name: str) -> int:
    """The position a projection's replay reached (0 if it never ran)."""
    conn = connection_of(session)
    return int(conn.execute(select(projections.c.position).where(projections.c.name == name)).scalar() or 0)


def _replay(session: Session, projection: Projection, after: int, batch: int) -> tuple[int, int, int]:
    read = applied = 0
    while True:
        found = read_all(session, after=after, limit=batch)
        for event in found:
            applied += projection.apply(session, event)
        read += len(found)
        if found:
            after = found[-1].position or after
        if len(found) < batch:
            return read, applied, after


def catch_up(engine: Engine, projection: Projection | str, *, batch: int = READ_BATCH) -> ReplayResult:
    """Apply every committed event after the projection's checkpoint, in position order.

    Each batch commits with its checkpoint. Events the live consumer already applied are
    skipped by the inbox, so catching up and consuming live can run side by side.
    """
    proj = projection if isinstance(projection, Projection) else get_projection(projection)
    total_read = total_applied = 0
    with Session(engine) as session:
        position = checkpoint(session, proj.name)
    while True:
        with Session(engine) as session, session.begin():
            found = read_all(session, after=position, limit=batch)
            for event in found:
                total_applied += proj.apply(session, event)
            if found:
                position = found[-1].position or position
                _set_position(session.connection(), proj.name, position, rebuilt=False)
        total_read += len(found)
        if len(found) < batch:
            return ReplayResult(proj.name, total_read, total_applied, position)


def rebuild(engine: Engine, projection: Projection | str, *, batch: int = READ_BATCH) -> ReplayResult:
    """Reset a projection and replay every event from position 0, in one transaction.

    Under the projection's exclusive lock: call its reset function, forget the events its
    inbox recorded, replay the whole store, and store the checkpoint. Live consumers wait
    meanwhile, then skip what the rebuild applied.

    Raises:
        UnknownProjection: no projection of that name.
        ValueError: the projection has no reset function.
    """
    proj = projection if isinstance(projection, Projection) else get_projection(projection)
    if not proj.has_reset:
        raise ValueError(f"projection {proj.name!r} has no reset function (decorate one with @on_reset)")
    with Session(engine) as session, session.begin():
        conn = session.connection()
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(proj.lock_id)))
        proj.reset(session)
        conn.execute(delete(inbox.inbox).where(inbox.inbox.c.consumer == proj.name))
        read, applied, position = _replay(session, proj, 0, batch)
        _set_position(conn, proj.name, position, rebuilt=True)
    return ReplayResult(proj.name, read, applied, position)


def projection_status(engine: Engine) -> list[dict[str, Any]]:
    """One entry per projection defined here or checkpointed in the database: name, position, lag."""
    defined = projection_names()
    with Session(engine) as session:
        head = head_position(session)
        rows = {row.name: row for row in session.execute(select(projections)).all()}
    out = []
    for name in sorted(set(rows) | set(defined)):
        row = rows.get(name)
        position = int(row.position) if row is not None else 0
        out.append(
            {
                "name": name,
                "defined": name in defined,
                "position": position,
                "behind": max(0, head - position),
                "rebuilt_at": row.rebuilt_at.isoformat() if row is not None and row.rebuilt_at else None,
            }
        )
    return out
