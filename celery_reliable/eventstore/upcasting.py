"""Upcasters: lift events stored in an old shape to the current one when they are read.

Stored events are never rewritten. An upcaster registered for ``(type, version)`` turns
``data`` of that version into ``data`` of ``version + 1``; reading applies them in a chain
until no upcaster is registered for the event's current ``(type, version)``::

    upcasters = Upcasters()

    @upcasters.register("Deposited", 1)
    def cents(data):                     # v1 held {"amount": 12.5} in euros
        return {"amount_cents": round(data["amount"] * 100)}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import check_schema_version, check_type

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: How many upcasters may be chained for one event before the chain is called a loop.
MAX_CHAIN = 1000


class Upcasters:
    """A registry of upcasters keyed by ``(event type, schema version)``."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register ``fn`` to lift ``event_type`` data from ``version`` to ``version + 1``.

        Raises:
            ValueError: a bad type or version, or one already registered.
        """
        check_type(event_type)
        check_schema_version(version)

        def decorate(fn: Upcaster) -> Upcaster:
            self.add(event_type, version, fn)
            return fn

        return decorate

    def add(self, event_type: str, version: int, fn: Upcaster) -> None:
        """Register ``fn`` for ``(event_type, version)`` (see :meth:`register`)."""
        check_type(event_type)
        check_schema_version(version)
        if not callable(fn):
            raise TypeError(f"an upcaster must be callable, got {fn!r}")
        if (event_type, version) in self._by_key:
            raise ValueError(f"an upcaster for {event_type!r} version {version} is already registered")
        self._by_key[(event_type, version)] = fn

    def upcast(self, event_type: str, version: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Lift ``data`` as far as registered upcasters go; returns the new version and data.

        Raises:
            TypeError: an upcaster returned something other than a dict.
        """
        for _ in range(MAX_CHAIN):
            fn = self._by_key.get((event_type, version))
            if fn is None:
                return version, data
            lifted = fn(dict(data))
            if not isinstance(lifted, dict):
                raise TypeError(
                    f"upcaster {getattr(fn, '__name__', fn)!r} for {event_type!r} version {version} "
                    f"returned {type(lifted).__name__}, not a dict"
                )
            version, data = version + 1, lifted
        raise RuntimeError(f"more than {MAX_CHAIN} upcasters chained for {event_type!r}")

    def __len__(self) -> int:
        return len(self._by_key)
