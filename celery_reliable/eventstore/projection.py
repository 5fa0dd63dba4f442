"""Projections: read models kept up to date from events, each event applied once.

::

    balances = Projection("balances")

    @balances.on("Deposited")
    def deposited(session, event):
        session.execute(text("UPDATE balances SET amount = amount + :a WHERE id = :i"), ...)

    @balances.on_reset
    def reset(session):
        session.execute(text("DELETE FROM balances"))

    consume = balances.task(app)           # a ReliableTask: pass it to append(publish=...)

A projection is fed two ways, both through :meth:`Projection.apply`, which records the
event id in the consumer inbox (consumer = the projection's name) in the same
transaction as the handler's writes, so an event delivered twice changes the read model
once:

- live: the task made by :meth:`Projection.task` receives every published event;
- replay (:mod:`.replay`): :func:`catch_up` reads the store in position order after the projection's
  checkpoint; :func:`rebuild` resets the read model and replays from position 0.

A rebuild runs in one transaction under an exclusive advisory lock of the projection,
and live applies take the same lock shared: while a rebuild runs, live consumers wait,
and then find the events it replayed already in the inbox. Readers see the old read
model until the rebuild commits.

Live deliveries follow each stream's publish order, but several workers may apply two
events of one stream concurrently; write handlers that do not depend on the order of
events of one stream (sums, counts, upserts keyed by version), or consume with one worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import inbox
from .errors import UnknownProjection
from .events import RecordedEvent, check_type
from .upcasting import Upcasters

if TYPE_CHECKING:
    from celery import Celery

Handler = Callable[[Session, RecordedEvent], None]
Reset = Callable[[Session], None]

#: Projections defined in this process, by name (filled by :class:`Projection`).
_registry: dict[str, Projection] = {}
#: Longest projection name (the inbox consumer column's width).
MAX_NAME_CHARS = 255

#: How long a projection remembers the events it applied: as long as it exists (a rebuild
#: forgets and replays them). An id forgotten earlier would let a late redelivery, a
#: replayed dead letter or a catch-up from an old checkpoint apply its event again.
APPLIED_MEMORY = timedelta(days=365 * 100)


class Projection:
    """A read model: handlers per event type, a reset, and its name (its inbox consumer name).

    Args:
        name: unique in the process; also the inbox consumer and the checkpoint key.
        upcasters: lift old event shapes before handlers see them.

    Raises:
        ValueError: a bad name, or a name another projection already has.
    """

    def __init__(self, name: str, *, upcasters: Upcasters | None = None) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ValueError(
                f"a projection name must be a printable str of 1-{MAX_NAME_CHARS} characters, got {name!r}"
            )
        if upcasters is not None and not isinstance(upcasters, Upcasters):
            raise TypeError(f"upcasters must be an Upcasters registry, got {type(upcasters).__name__}")
        if name in _registry:
            raise ValueError(f"a projection named {name!r} is already defined")
        self.name = name
        self.upcasters = upcasters
        self._handlers: dict[str, Handler] = {}
        self._reset: Reset | None = None
        _registry[name] = self

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, handles={sorted(self._handlers)})"

    def on(self, *event_types: str) -> Callable[[Handler], Handler]:
        """Decorator: ``fn(session, event)`` updates the read model for ``event_types``."""
        if not event_types:
            raise TypeError("on() needs at least one event type")
        for event_type in event_types:
            check_type(event_type)
            if event_type in self._handlers:
                raise ValueError(f"projection {self.name!r} already handles {event_type!r}")

        def decorate(fn: Handler) -> Handler:
            if not callable(fn):
                raise TypeError(f"a handler must be callable, got {fn!r}")
            for event_type in event_types:
                self._handlers[event_type] = fn
            return fn

        return decorate

    def on_reset(self, fn: Reset) -> Reset:
        """Decorator: ``fn(session)`` empties the read model (called by :func:`rebuild`)."""
        if not callable(fn):
            raise TypeError(f"a reset function must be callable, got {fn!r}")
        self._reset = fn
        return fn

    @property
    def has_reset(self) -> bool:
        """Whether a reset function was given (:func:`rebuild` needs one)."""
        return self._reset is not None

    def reset(self, session: Session) -> None:
        """Empty the read model with the function given to :meth:`on_reset`.

        Raises:
            ValueError: the projection has no reset function.
        """
        if self._reset is None:
            raise ValueError(f"projection {self.name!r} has no reset function (decorate one with @on_reset)")
        self._reset(session)

    @property
    def event_types(self) -> list[str]:
        """The event types this projection handles."""
        return sorted(self._handlers)

    def apply(self, session: Session, event: RecordedEvent) -> bool:
        """Apply one event in ``session``'s transaction, once per event id.

        Returns:
            ``True`` if applied; ``False`` for an event type it does not handle, or an
            event it already applied (nothing written).
        """
        handler = self._handlers.get(event.type)
        if handler is None:
            return False
        conn = session.connection()
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock_shared(self.lock_id)))
        if not inbox.record(session, self.name, event.event_id, ttl=APPLIED_MEMORY):
            return False
        if self.upcasters is not None:
            version, data = self.upcasters.upcast(event.type, event.schema_version, event.data)
            if version != event.schema_version:
                event = RecordedEvent(**{**event.__dict__, "schema_version": version, "data": data})
        handler(session, event)
        return True

    @property
    def lock_id(self) -> int:
        """The advisory-lock id a rebuild holds exclusively and live applies hold shared."""
        digest = hashlib.sha256(f"reliable_projection:{self.name}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def task(self, app: Celery, *, name: str | None = None, **options: Any) -> Any:
        """Register the live consumer: a ReliableTask taking ``event`` (a published event message).

        Args:
            app: the Celery app.
            name: the task name (default ``celery_reliable.projection.<name>``).
            **options: more task options (``queue``, ``retry_policy``, ``dead_letter``...).

        Returns:
            The task, to pass to ``append(..., publish=...)``.
        """
        from ..task import ReliableTask

        projection = self

        def consume(task: Any, event: dict[str, Any]) -> bool:
            recorded = RecordedEvent.from_message(event)
            with task.transaction() as session:
                return projection.apply(session, recorded)

        consume.__doc__ = f"Apply a published event to projection {self.name!r} (once per event id)."
        return app.task(
            base=ReliableTask, bind=True, name=name or f"celery_reliable.projection.{self.name}", **options
        )(consume)


def get_projection(name: str) -> Projection:
    """The projection defined under ``name`` in this process.

    Raises:
        UnknownProjection: none has that name.
    """
    try:
        return _registry[name]
    except KeyError:
        raise UnknownProjection(name, sorted(_registry)) from None


def projection_names() -> list[str]:
    """Names of the projections defined in this process."""
    return sorted(_registry)


def forget_projection(name: str) -> None:
    """Remove a projection from this process's registry (tests, reloads)."""
    _registry.pop(name, None)
