"""What we know about one idempotency key, wherever it was read from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..jsoncodec import dumps, loads

COMMITTED = "committed"
COMPLETED = "completed"


@dataclass(frozen=True)
class Record:
    """A key whose effects committed (``committed``) or whose result is stored (``completed``).

    Attributes:
        fingerprint: fingerprint of the arguments the key was used with.
        task_id: id of the task that did the work.
        state: ``committed`` or ``completed``.
        result_json: the result as canonical JSON text (``None`` while only committed).
    """

    fingerprint: str
    task_id: str
    state: str
    result_json: str | None

    @property
    def result(self) -> Any:
        """The stored result, decoded (``None`` while only committed)."""
        return None if self.result_json is None else loads(self.result_json)

    def to_json(self) -> str:
        """Encode for the Redis cache."""
        return dumps({"f": self.fingerprint, "t": self.task_id, "s": self.state, "r": self.result_json})

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        """Decode what :meth:`to_json` wrote."""
        data = loads(text)
        return cls(fingerprint=data["f"], task_id=data["t"], state=data["s"], result_json=data["r"])
