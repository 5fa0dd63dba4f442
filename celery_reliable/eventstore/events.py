"""Events as written (:class:`NewEvent`) and as read back (:class:`RecordedEvent`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import jsoncodec
from .model import MAX_EVENT_ID_CHARS, MAX_STREAM_ID_CHARS, MAX_TYPE_CHARS


@dataclass(frozen=True)
class NewEvent:
    """An event to append.

    Attributes:
        type: the event type, e.g. ``"Deposited"``.
        data: the payload, a JSON object (``dict`` with JSON values; never pickled).
        schema_version: which shape ``data`` has (upcasters lift older shapes on read).
        metadata: JSON object stored beside the data (causation, correlation, user, ...).
        event_id: unique id; the outbox message id and the consumers' inbox id (default: a UUID).
    """

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        check_type(self.type)
        if not isinstance(self.data, Mapping):
            raise TypeError(f"event data must be a JSON object (a dict), got {type(self.data).__name__}")
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"event metadata must be a JSON object (a dict), got {type(self.metadata).__name__}")
        check_schema_version(self.schema_version)
        if not isinstance(self.event_id, str) or not self.event_id or len(self.event_id) > MAX_EVENT_ID_CHARS:
            raise ValueError(f"event_id must be a str of 1-{MAX_EVENT_ID_CHARS} characters, got {self.event_id!r}")

    def encoded(self) -> tuple[str, str]:
        """``data`` and ``metadata`` as canonical JSON text.

        Raises:
            SerializationError: naming the first value JSON cannot hold.
        """
        data = jsoncodec.dumps(dict(self.data), where=f"{self.type} data")
        meta = jsoncodec.dumps(dict(self.metadata), where=f"{self.type} metadata")
        return data, meta


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored, after upcasting.

    Attributes:
        stream_id: the stream it belongs to.
        version: its version in the stream (1, 2, ...).
        position: its global position; ``None`` until its transaction commits (and in
            messages published through the outbox, which are written before the commit).
        event_id: its unique id.
        type: its type.
        schema_version: the shape of ``data`` (after upcasting).
        data: the payload.
        metadata: what was stored beside the payload.
        recorded_at: when it was appended.
    """

    stream_id: str
    version: int
    position: int | None
    event_id: str
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime | None

    def as_message(self) -> dict[str, Any]:
        """The JSON object a published event carries (see :meth:`from_message`)."""
        return {
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "version": self.version,
            "position": self.position,
            "type": self.type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": self.metadata,
            "recorded_at": self.recorded_at.isoformat() if self.recorded_at else None,
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> RecordedEvent:
        """Rebuild an event from :meth:`as_message` output (as a consumer task receives it).

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        try:
            at = message.get("recorded_at")
            event = cls(
                stream_id=str(message["stream_id"]),
                version=int(message["version"]),
                position=None if message.get("position") is None else int(message["position"]),
                event_id=str(message["event_id"]),
                type=str(message["type"]),
                schema_version=int(message["schema_version"]),
                data=dict(message["data"]),
                metadata=dict(message.get("metadata") or {}),
                recorded_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an event message: {exc!r} in {message!r}") from exc
        return event


def check_type(event_type: object) -> None:
    """Raise ``ValueError`` unless ``event_type`` is a usable event type name."""
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_TYPE_CHARS:
        raise ValueError(f"an event type must be a str of 1-{MAX_TYPE_CHARS} characters, got {event_type!r}")


def check_schema_version(version: object) -> None:
    """Raise ``ValueError`` unless ``version`` is an int of at least 1."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"a schema version must be an int >= 1, got {version!r}")


def check_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if usable (1-255 characters, no NUL); raise ``ValueError`` otherwise."""
    if not isinstance(stream_id, str) or not stream_id or len(stream_id) > MAX_STREAM_ID_CHARS or "\x00" in stream_id:
        raise ValueError(
            f"a stream id must be a str of 1-{MAX_STREAM_ID_CHARS} characters without NUL, got {stream_id!r}"
        )
    return stream_id
