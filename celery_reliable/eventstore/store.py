"""Append to and read from streams, in the caller's SQLAlchemy transaction.

::

    with Session(engine) as session, session.begin():
        append(session, "account-42", [NewEvent("Deposited", {"amount": 10})], expected_version=3)

``expected_version`` is the version the caller based its decision on: ``0`` means the
stream must not exist yet, :data:`ANY_VERSION` skips the check. The stream's row is
checked and bumped by one conditional statement, so of several concurrent appends
expecting the same version exactly one succeeds; the others wait for its commit and then
raise :class:`ConcurrencyConflict` naming the version that won. Nothing is written by a
refused append; roll back and run the command again (:func:`run_command`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import jsoncodec
from ..sessions import connection_of
from .errors import ConcurrencyConflict, DuplicateEvent
from .events import NewEvent, RecordedEvent, check_stream_id
from .model import events, streams
from .publish import publish_events, subscriber_names
from .upcasting import Upcasters

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection, Row

#: ``expected_version`` that skips the concurrency check (append whatever the version).
ANY_VERSION: Final = "any"
#: ``expected_version`` of a stream that must not exist yet.
NO_STREAM: Final = 0
#: Rows fetched per round trip by the readers.
READ_BATCH = 1000


def _check_expected(expected_version: object) -> int | None:
    if expected_version == ANY_VERSION and isinstance(expected_version, str):
        return None
    if not isinstance(expected_version, int) or isinstance(expected_version, bool):
        raise TypeError(f"expected_version must be an int >= 0 or ANY_VERSION, got {expected_version!r}")
    if expected_version < 0:
        raise ValueError(f"expected_version must be >= 0 (0: the stream must not exist), got {expected_version}")
    return expected_version


def append(
    session: Session | Connection,
    stream_id: str,
    new_events: Iterable[NewEvent],
    *,
    expected_version: int | str,
    publish: Any = None,
    app: Celery | None = None,
    **publish_options: Any,
) -> list[RecordedEvent]:
    """Append events to a stream in ``session``'s transaction.

    Args:
        session: a SQLAlchemy ``Session`` or ``Connection`` inside a transaction.
        stream_id: the stream (1-255 characters); it is also the outbox ordering key.
        new_events: the events, in order (at least one).
        expected_version: the stream's version the caller expects (``0``: must not exist),
            or :data:`ANY_VERSION`.
        publish: subscriber task(s) (tasks or names) each event is sent to through the
            outbox, in this transaction; ``None`` publishes nothing.
        app: the Celery app whose outbox settings apply (default: the task's app).
        **publish_options: ``apply_async`` options for the messages (``queue``, ``priority``...).

    Returns:
        The events as recorded (versions set; ``position`` is ``None`` until commit).

    Raises:
        ConcurrencyConflict: the stream is not at ``expected_version``.
        DuplicateEvent: an event id is already stored (the transaction is aborted).
        SerializationError: event data or metadata JSON cannot hold.
        TypeError, ValueError: a bad stream id, event, expected version or subscriber.
    """
    check_stream_id(stream_id)
    expected = _check_expected(expected_version)
    batch = list(new_events)
    if not batch:
        raise ValueError("append() needs at least one event")
    for event in batch:
        if not isinstance(event, NewEvent):
            raise TypeError(f"append() takes NewEvent objects, got {type(event).__name__} {event!r}")
    if len({event.event_id for event in batch}) != len(batch):
        raise ValueError("append() got the same event id twice (give each NewEvent its own event_id)")
    encoded = [event.encoded() for event in batch]  # refuse non-JSON data before writing anything
    subscribers = subscriber_names(publish)
    conn = connection_of(session)
    now = datetime.now(timezone.utc)
    last = _bump(conn, stream_id, expected, len(batch), now)
    first = last - len(batch) + 1
    sqlite = conn.dialect.name == "sqlite"
    next_position = _sqlite_next_position(conn) if sqlite else None
    rows: list[dict[str, Any]] = []
    recorded: list[RecordedEvent] = []
    for offset, (event, (data, meta)) in enumerate(zip(batch, encoded, strict=True)):
        position = None if next_position is None else next_position + offset
        rows.append(
            {
                "stream_id": stream_id,
                "version": first + offset,
                "event_id": event.event_id,
                "position": position,
                "event_type": event.type,
                "schema_version": event.schema_version,
                "data": data,
                "metadata": meta,
                "recorded_at": now,
            }
        )
        recorded.append(
            RecordedEvent(
                stream_id=stream_id,
                version=first + offset,
                position=position,
                event_id=event.event_id,
                type=event.type,
                schema_version=event.schema_version,
                data=jsoncodec.loads(data),
                metadata=jsoncodec.loads(meta),
                recorded_at=now,
            )
        )
    try:
        conn.execute(insert(events), rows)
    except IntegrityError as exc:
        if "event_id" not in str(exc.orig):
            raise
        raise DuplicateEvent([event.event_id for event in batch]) from exc
    if subscribers:
        publish_events(conn, recorded, subscribers, app, publish_options)
    return recorded


def _bump(conn: Connection, stream_id: str, expected: int | None, count: int, now: datetime) -> int:
    """Move the stream's version on by ``count`` if it is at ``expected``; returns the new version."""
    if expected is None or expected == 0:
        upsert = _upsert(conn)
        stmt = upsert(streams).values(stream_id=stream_id, version=count, created_at=now, updated_at=now)
        if expected is None:
            stmt = stmt.on_conflict_do_update(
                index_elements=[streams.c.stream_id],
                set_={"version": streams.c.version + count, "updated_at": now},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[streams.c.stream_id])
        row = conn.execute(stmt.returning(streams.c.version)).first()
    else:
        row = conn.execute(
            update(streams)
            .where(streams.c.stream_id == stream_id, streams.c.version == expected)
            .values(version=streams.c.version + count, updated_at=now)
            .returning(streams.c.version)
        ).first()
    if row is None:
        assert expected is not None
        raise ConcurrencyConflict(stream_id, expected, stream_version(conn, stream_id))
    return int(row[0])


def _upsert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise NotImplementedError(f"the event store supports PostgreSQL and SQLite, not {conn.dialect.name}")


def _sqlite_next_position(conn: Connection) -> int:
    # SQLite has one writer at a time: numbering at insert is numbering in commit order.
    return int(conn.execute(select(func.coalesce(func.max(events.c.position), 0))).scalar_one()) + 1


def lock_stream(session: Session | Connection, stream_id: str) -> int:
    """Lock the stream's row until the transaction ends (``FOR UPDATE``); returns its version.

    Other appends to the stream wait until this transaction ends (and then conflict), so
    a load and an append after this call cannot be raced. A stream that does not exist
    yet has no row to lock (0 is returned). SQLite locks the whole database anyway.
    """
    check_stream_id(stream_id)
    stmt = select(streams.c.version).where(streams.c.stream_id == stream_id)
    conn = connection_of(session)
    if conn.dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    return int(conn.execute(stmt).scalar() or 0)


def stream_version(session: Session | Connection, stream_id: str) -> int:
    """The stream's committed version (0 for a stream that does not exist)."""
    check_stream_id(stream_id)
    value = connection_of(session).execute(select(streams.c.version).where(streams.c.stream_id == stream_id)).scalar()
    return int(value or 0)


def _recorded(row: Row[Any], upcasters: Upcasters | None) -> RecordedEvent:
    data = jsoncodec.loads(row.data)
    version = int(row.schema_version)
    if upcasters is not None:
        version, data = upcasters.upcast(row.event_type, version, data)
    return RecordedEvent(
        stream_id=row.stream_id,
        version=int(row.version),
        position=None if row.position is None else int(row.position),
        event_id=row.event_id,
        type=row.event_type,
        schema_version=version,
        data=data,
        metadata=jsoncodec.loads(row.metadata),
        recorded_at=row.recorded_at,
    )


def read_stream(
    session: Session | Connection,
    stream_id: str,
    *,
    after_version: int = 0,
    upcasters: Upcasters | None = None,
) -> list[RecordedEvent]:
    """The stream's events with a version above ``after_version``, in version order, upcast.

    Raises:
        ValueError: a bad stream id or a negative ``after_version``.
    """
    check_stream_id(stream_id)
    if not isinstance(after_version, int) or isinstance(after_version, bool) or after_version < 0:
        raise ValueError(f"after_version must be an int >= 0, got {after_version!r}")
    conn = connection_of(session)
    out: list[RecordedEvent] = []
    while True:
        rows = conn.execute(
            select(events)
            .where(events.c.stream_id == stream_id, events.c.version > after_version)
            .order_by(events.c.version)
            .limit(READ_BATCH)
        ).all()
        out.extend(_recorded(row, upcasters) for row in rows)
        if len(rows) < READ_BATCH:
            return out
        after_version = int(rows[-1].version)


def read_all(
    session: Session | Connection,
    *,
    after: int = 0,
    limit: int = READ_BATCH,
    upcasters: Upcasters | None = None,
) -> list[RecordedEvent]:
    """Up to ``limit`` committed events of every stream with a position above ``after``, in commit order.

    Positions are handed out at commit, in commit order (:mod:`.position`), so a reader
    that remembers the last position it processed and asks for "after" it again never
    skips an event that commits later. Events of the caller's own open transaction have
    no position yet and are not returned.

    Raises:
        ValueError: a negative ``after`` or a ``limit`` under 1.
    """
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise ValueError(f"after must be an int >= 0, got {after!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    rows = (
        connection_of(session)
        .execute(select(events).where(events.c.position > after).order_by(events.c.position).limit(limit))
        .all()
    )
    return [_recorded(row, upcasters) for row in rows]


def head_position(session: Session | Connection) -> int:
    """The highest committed position (0 when the store is empty)."""
    return int(connection_of(session).execute(select(func.coalesce(func.max(events.c.position), 0))).scalar_one())
