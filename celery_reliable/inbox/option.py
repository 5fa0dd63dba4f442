"""The ``inbox`` task option: a ReliableTask as a deduplicating message consumer."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import duration_ms
from ..errors import ConfigurationError
from ..idempotency.keys import KeyBuilder
from .store import DEFAULT_TTL


@dataclass(frozen=True)
class InboxSpec:
    """The inbox options of one task, checked at declaration.

    Attributes:
        message_id: builds the message id from a call; ``None`` means the task id.
        ttl_ms: how long processed ids are remembered.
    """

    message_id: KeyBuilder | None
    ttl_ms: int

    def entry(self, task_name: str, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> InboxEntry:
        """The inbox row one call records (the consumer is the task's name)."""
        mid = task_id if self.message_id is None else self.message_id.build(args, kwargs)
        return InboxEntry(task_name, mid, self.ttl_ms)


@dataclass(frozen=True)
class InboxEntry:
    """What ``self.transaction()`` records first for one execution of an inbox task."""

    consumer: str
    message_id: str
    ttl_ms: int


def compile_inbox(cls: type, sig: inspect.Signature | None) -> InboxSpec | None:
    """Build the inbox spec of a task class from its ``inbox`` and ``inbox_ttl`` options.

    Raises:
        ConfigurationError: for a wrong value, or ``inbox_ttl`` without ``inbox``.
    """
    source = getattr(cls, "inbox", None)
    ttl = getattr(cls, "inbox_ttl", None)
    if source is None or source is False:
        if ttl is not None:
            raise ConfigurationError("inbox_ttl", "has no effect without inbox=True or inbox='<message id template>'")
        return None
    if source is True:
        builder = None
    elif isinstance(source, str) or callable(source):
        builder = KeyBuilder(source, sig, option="inbox")
        builder.validate()
    else:
        raise ConfigurationError(
            "inbox",
            f"expected True (the task id), a template string or a callable, got {type(source).__name__} {source!r}",
        )
    ttl_ms = duration_ms("inbox_ttl", DEFAULT_TTL if ttl is None else ttl)
    if ttl_ms < 1000:
        raise ConfigurationError("inbox_ttl", f"must be at least one second, got {ttl!r}")
    return InboxSpec(builder, ttl_ms)
