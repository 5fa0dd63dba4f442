"""Load an aggregate (snapshot + later events) and save its pending events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .aggregate import Aggregate
from .events import RecordedEvent
from .snapshots import Snapshot, read_snapshot, write_snapshot
from .store import append, read_stream
from .upcasting import Upcasters

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

A = TypeVar("A", bound=Aggregate)


def load(
    session: Session | Connection,
    cls: type[A],
    stream_id: str,
    *,
    upcasters: Upcasters | None = None,
    use_snapshot: bool = True,
) -> A:
    """Rebuild an aggregate: from its latest snapshot (if usable) plus the events after it.

    A snapshot of another ``aggregate_type`` or ``snapshot_version`` is ignored. A stream
    that does not exist gives a fresh aggregate at version 0.

    Raises:
        UnknownEventType: a stored event type the class has no apply method for.
    """
    if not (isinstance(cls, type) and issubclass(cls, Aggregate)):
        raise TypeError(f"load() needs an Aggregate subclass, got {cls!r}")
    snap = read_snapshot(session, stream_id) if use_snapshot else None
    if snap is not None and snap.aggregate_type == cls.aggregate_type and snap.schema_version == cls.snapshot_version:
        aggregate = cls.from_snapshot(stream_id, snap.version, snap.state)
    else:
        aggregate = cls(stream_id)
    history: list[RecordedEvent] = read_stream(session, stream_id, after_version=aggregate.version, upcasters=upcasters)
    aggregate.replay(history)
    return aggregate


def save(
    session: Session | Connection,
    aggregate: Aggregate,
    *,
    publish: Any = None,
    app: Celery | None = None,
    **publish_options: Any,
) -> list[RecordedEvent]:
    """Append the aggregate's pending events, expecting the version it was loaded at.

    Also stores a snapshot in the same transaction when the save crosses a multiple of
    the class's ``snapshot_every``. Saving with nothing pending does nothing.

    Args:
        session: the transaction.
        aggregate: the aggregate with pending events.
        publish: subscriber task(s) that get every event through the outbox (see :func:`append`).
        app: the Celery app for the outbox settings.
        **publish_options: ``apply_async`` options for the published messages.

    Returns:
        The recorded events.

    Raises:
        ConcurrencyConflict: someone else appended to the stream since it was loaded.
    """
    pending = aggregate.pending_events
    if not pending:
        return []
    recorded = append(
        session,
        aggregate.id,
        pending,
        expected_version=aggregate.loaded_version,
        publish=publish,
        app=app,
        **publish_options,
    )
    every = type(aggregate).snapshot_every
    before = aggregate.loaded_version
    aggregate.mark_saved()
    if every is not None and before // every != aggregate.version // every:
        write_snapshot(
            session,
            Snapshot(
                stream_id=aggregate.id,
                aggregate_type=type(aggregate).aggregate_type,
                version=aggregate.version,
                schema_version=type(aggregate).snapshot_version,
                state=aggregate.snapshot_state(),
            ),
        )
    return recorded
