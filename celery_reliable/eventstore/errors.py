"""Errors of the event store (all derive from :class:`~celery_reliable.errors.ReliableError`)::

ReliableError
└── EventStoreError               misuse of the event store, or a stream it cannot read
    ├── ConcurrencyConflict       the stream's version was not the expected one
    ├── UnknownEventType          an aggregate has no apply method for an event type
    └── UnknownProjection         no projection of that name is registered
"""

from __future__ import annotations

from ..errors import ReliableError


class EventStoreError(ReliableError):
    """Base class of event-store errors."""


class ConcurrencyConflict(EventStoreError):
    """Another writer appended to the stream first; nothing of this append was written.

    Roll the transaction back, reload the aggregate and run the command again
    (:func:`~celery_reliable.eventstore.run_command` does exactly that).

    Attributes:
        stream_id: the stream appended to.
        expected_version: the version the caller expected (0: the stream must not exist).
        actual_version: the stream's version as committed when the append was refused.
    """

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(stream_id, expected_version, actual_version)
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        self.message = (
            f"stream {stream_id!r} is at version {actual_version}, expected version {expected_version}; "
            "reload and try again"
        )


class DuplicateEvent(EventStoreError, ValueError):
    """An appended event's id is already stored (event ids are unique across the store).

    The database refused the insert, so the transaction is aborted: roll it back.

    Attributes:
        event_ids: the ids of the refused append.
    """

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__(event_ids)
        self.event_ids = event_ids
        self.message = f"an event id of this append is already stored: {', '.join(event_ids)}"


class UnknownEventType(EventStoreError, TypeError):
    """An aggregate was given an event type it has no apply method for.

    Attributes:
        aggregate: the aggregate class name.
        event_type: the event type.
    """

    def __init__(self, aggregate: str, event_type: str) -> None:
        super().__init__(aggregate, event_type)
        self.aggregate = aggregate
        self.event_type = event_type
        self.message = (
            f"{aggregate} has no apply method for event type {event_type!r} "
            f"(define apply_{event_type} or decorate a method with @applies({event_type!r}))"
        )


class UnknownProjection(EventStoreError, LookupError):
    """No projection of this name is registered in this process.

    Attributes:
        name: the name asked for.
        known: the registered names.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name, known)
        self.name = name
        self.known = known
        self.message = f"no projection named {name!r}; registered: {', '.join(known) or '(none)'}"
