"""Canonical JSON: the one encoding we store and hash (never pickle)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import SerializationError

_JSON_SCALARS = (str, int, float, bool, type(None))


def _find_bad(value: Any, where: str) -> tuple[str, Any] | None:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return where, value
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_bad(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{where} key {k!r}", k
            found = _find_bad(item, f"{where}[{k!r}]")
            if found:
                return found
        return None
    return where, value


def dumps(value: Any, where: str = "value") -> str:
    """Encode ``value`` as canonical JSON (sorted keys, no spaces, UTF-8 kept).

    Raises:
        SerializationError: naming the first part of ``value`` JSON cannot hold.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        found = _find_bad(value, where)
        if found is None:  # pragma: no cover - json refused something we accept
            raise SerializationError(where, value) from exc
        raise SerializationError(found[0], found[1]) from exc


def loads(text: str | bytes) -> Any:
    """Decode JSON text written by :func:`dumps`."""
    return json.loads(text)


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text``; lone surrogates are hashed rather than refused."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(args: Any, kwargs: Any) -> str:
    """Fingerprint of a call's arguments: SHA-256 of their canonical JSON.

    Raises:
        SerializationError: when an argument cannot be encoded as JSON.
    """
    return sha256_hex(dumps({"args": list(args or ()), "kwargs": dict(kwargs or {})}, where="arguments"))
