"""The aggregate base class: state rebuilt by replaying its events.

::

    class Account(Aggregate):
        def __init__(self, stream_id):
            super().__init__(stream_id)
            self.balance = 0

        def deposit(self, amount):                 # a command: check, then record
            if amount <= 0:
                raise ValueError("deposit must be positive")
            self.record("Deposited", {"amount": amount})

        @applies("Deposited")                      # or name the method apply_Deposited
        def _deposited(self, data):
            self.balance += data["amount"]

An apply method only changes state (no checks, no I/O): it runs for new events and again
for every replay. ``record`` applies the event at once and keeps it pending until
:func:`~celery_reliable.eventstore.save` appends it with ``expected_version`` = the
version the aggregate was loaded at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from .. import jsoncodec
from .errors import UnknownEventType
from .events import NewEvent, RecordedEvent, check_schema_version, check_stream_id, check_type

F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="Aggregate")

_APPLIES_ATTR = "_reliable_applies"


def applies(*event_types: str) -> Callable[[F], F]:
    """Decorator: mark a method as the apply method of ``event_types`` (it gets the event's data)."""
    for event_type in event_types:
        check_type(event_type)
    if not event_types:
        raise TypeError("@applies() needs at least one event type")

    def decorate(fn: F) -> F:
        setattr(fn, _APPLIES_ATTR, (*getattr(fn, _APPLIES_ATTR, ()), *event_types))
        return fn

    return decorate


class Aggregate:
    """Base class of event-sourced aggregates.

    Class attributes (override in subclasses):

    Attributes:
        aggregate_type: the name stored with snapshots (default: the class name).
        snapshot_every: store a snapshot when a save crosses a multiple of this many
            events (``None``: never).
        snapshot_version: the shape of :meth:`snapshot_state`; a stored snapshot of another
            shape is ignored (the aggregate is replayed in full).
        event_schema_versions: the schema version :meth:`record` writes per event type
            (default 1).

    Instance attributes:

    Attributes:
        id: the stream id.
        version: the version of the last event applied (pending events included).
    """

    #: The name stored with snapshots (default: the class name).
    aggregate_type: ClassVar[str] = ""
    #: Snapshot when a save crosses a multiple of this many events; ``None``: never.
    snapshot_every: ClassVar[int | None] = None
    #: The shape of :meth:`snapshot_state`; other shapes are ignored on load.
    snapshot_version: ClassVar[int] = 1
    #: Schema version :meth:`record` writes, per event type (default 1).
    event_schema_versions: ClassVar[Mapping[str, int]] = {}

    _appliers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("aggregate_type"):
            cls.aggregate_type = cls.__name__
        se = cls.snapshot_every
        if se is not None and (not isinstance(se, int) or isinstance(se, bool) or se < 1):
            raise ValueError(f"{cls.__name__}.snapshot_every must be None or an int >= 1, got {se!r}")
        check_schema_version(cls.snapshot_version)
        for event_type, version in cls.event_schema_versions.items():
            check_type(event_type)
            check_schema_version(version)
        appliers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                for event_type in getattr(member, _APPLIES_ATTR, ()):
                    appliers[event_type] = name
        cls._appliers = appliers

    def __init__(self, stream_id: str) -> None:
        self.id = check_stream_id(stream_id)
        self.version = 0
        self._loaded_version = 0
        self._pending: list[NewEvent] = []

    # -- writing ------------------------------------------------------------------------

    def record(self, event_type: str, data: Mapping[str, Any] | None = None, **metadata: Any) -> NewEvent:
        """Apply a new event to this aggregate and keep it pending until saved.

        Raises:
            UnknownEventType: no apply method for ``event_type`` (nothing is applied).
            SerializationError: ``data`` or ``metadata`` is not JSON.
        """
        event = NewEvent(
            type=event_type,
            data=dict(data or {}),
            schema_version=self.event_schema_versions.get(event_type, 1),
            metadata=metadata,
        )
        event.encoded()  # refuse non-JSON data now, not at save time
        applier = self._applier(event_type)
        applier(jsoncodec.loads(jsoncodec.dumps(dict(event.data))))  # the state sees what a replay will see
        self._pending.append(event)
        self.version += 1
        return event

    @property
    def pending_events(self) -> list[NewEvent]:
        """Events recorded since the aggregate was loaded or last saved."""
        return list(self._pending)

    @property
    def loaded_version(self) -> int:
        """The stream version the aggregate was loaded at (the next save's ``expected_version``)."""
        return self._loaded_version

    def mark_saved(self) -> list[NewEvent]:
        """Forget the pending events (they were appended); returns them."""
        saved, self._pending = self._pending, []
        self._loaded_version = self.version
        return saved

    # -- replaying ----------------------------------------------------------------------

    def replay(self, history: list[RecordedEvent]) -> None:
        """Apply stored events (already upcast) in version order.

        Raises:
            UnknownEventType: an event type without an apply method.
            ValueError: an event out of version order, or of another stream.
        """
        if self._pending:
            raise ValueError(f"{self.id}: cannot replay onto an aggregate with pending events")
        for event in history:
            if event.stream_id != self.id:
                raise ValueError(f"event {event.event_id} belongs to stream {event.stream_id!r}, not {self.id!r}")
            if event.version != self.version + 1:
                raise ValueError(f"{self.id}: event version {event.version} follows version {self.version}")
            self._applier(event.type)(event.data)
            self.version = event.version
        self._loaded_version = self.version

    def _applier(self, event_type: str) -> Callable[[dict[str, Any]], None]:
        name = self._appliers.get(event_type)
        if name is None and event_type.isidentifier():
            name = f"apply_{event_type}" if callable(getattr(self, f"apply_{event_type}", None)) else None
        if name is None:
            raise UnknownEventType(type(self).__name__, event_type)
        method: Callable[[dict[str, Any]], None] = getattr(self, name)
        return method

    # -- snapshots ----------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        """The state to store in a snapshot (JSON). Default: public attributes except ``id`` and ``version``."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("id", "version")}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Set the state from :meth:`snapshot_state` output. Default: set each key as an attribute."""
        for key, value in state.items():
            setattr(self, key, value)

    @classmethod
    def from_snapshot(cls: type[A], stream_id: str, version: int, state: dict[str, Any]) -> A:
        """An aggregate at ``version`` from a stored snapshot state."""
        aggregate = cls(stream_id)
        aggregate.restore_state(state)
        aggregate.version = version
        aggregate._loaded_version = version
        return aggregate
