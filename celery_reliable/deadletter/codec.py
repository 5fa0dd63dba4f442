"""Turn a :class:`DeadLetter` into table values and back (canonical JSON, never pickle).

Whatever a broken message holds must still fit the table, or the letter would be lost:
values JSON cannot hold become ``{"__unserializable__": repr}``, text loses NUL characters
and lone surrogates (PostgreSQL refuses both), over-long names are shortened with a hash
so equal inputs still give equal keys, and bodies that are not UTF-8 are stored as base64.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..errors import SerializationError
from ..jsoncodec import dumps, loads
from .record import UNSERIALIZABLE, DeadLetter

#: Longest repr kept for a value JSON cannot hold.
REPR_LIMIT = 65_536


def utc(when: datetime | None) -> datetime | None:
    """``when`` in UTC; a naive datetime (as SQLite returns them) is taken as UTC already."""
    if when is None:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def clean_text(text: str | None) -> str | None:
    """``text`` without NUL characters or lone surrogates (escaped), storable in any database."""
    if text is None:
        return None
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(text: str | None, limit: int) -> str | None:
    """``text`` cleaned and cut to ``limit`` characters; a cut one ends in a hash of the whole."""
    text = clean_text(text)
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 65] + "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _wrap(value: Any) -> dict[str, str]:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not lose the letter
        text = object.__repr__(value)
    if len(text) > REPR_LIMIT:
        text = f"{text[:REPR_LIMIT]}… ({len(text)} characters)"
    return {UNSERIALIZABLE: text}


def _item(value: Any) -> Any:
    try:
        dumps(value)
    except SerializationError:
        return _wrap(value)
    return value


def encode_json(value: Any) -> str | None:
    """Canonical JSON of ``value``; the parts JSON cannot hold are replaced by wrappers."""
    if value is None:
        return None
    try:
        text = dumps(value)
    except SerializationError:
        if isinstance(value, (list, tuple)):
            text = dumps([_item(v) for v in value])
        elif isinstance(value, Mapping):
            text = dumps({str(k): _item(v) for k, v in value.items()})
        else:
            text = dumps(_wrap(value))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them, as JSON escapes
        text = json.dumps(loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text


def encode_body(raw: str | bytes | None) -> tuple[str | None, str | None]:
    """``(text, encoding)`` of a raw body: ``utf-8`` when it is clean UTF-8 text, else ``base64``."""
    if raw is None:
        return None, None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return base64.b64encode(data).decode("ascii"), "base64"
    return text, "utf-8"


def _json(text: str | None) -> Any:
    return None if text is None else loads(text)


def to_values(letter: DeadLetter, now: datetime) -> dict[str, Any]:
    """The column values of a new row for ``letter``, stored at ``now`` (UTC)."""
    raw_body, encoding = encode_body(letter.raw_body)
    first = utc(letter.first_failed_at) or now
    args = encode_json(list(letter.args) if isinstance(letter.args, tuple) else letter.args)
    kwargs = encode_json(letter.kwargs)
    as_stored = dataclasses.replace(letter, args=_json(args), kwargs=_json(kwargs))
    return {
        "dedup_key": bounded(letter.dedup_key, 512),
        "task_id": bounded(letter.task_id, 255),
        "task_name": bounded(letter.task_name, 255),
        "queue": bounded(letter.queue, 255),
        "args": args,
        "kwargs": kwargs,
        "headers": encode_json(letter.headers),
        "raw_body": raw_body,
        "raw_body_encoding": encoding,
        "replayable": as_stored.why_not_replayable() is None,
        "exception_type": bounded(letter.exception_type, 255),
        "exception_message": clean_text(letter.exception_message),
        "traceback": clean_text(letter.traceback),
        "attempts": letter.attempts,
        "history": encode_json(list(letter.history)),
        "first_failed_at": first,
        "last_failed_at": utc(letter.last_failed_at) or max(first, now),
        "reason": letter.reason,
        "created_at": now,
        "replayed_at": None,
        "replay_task_id": None,
        "replay_count": 0,
    }


def from_row(row: Any) -> DeadLetter:
    """The :class:`DeadLetter` of a table row."""
    return DeadLetter(
        id=row.id,
        dedup_key=row.dedup_key,
        reason=row.reason,
        queue=row.queue,
        task_id=row.task_id,
        task_name=row.task_name,
        args=_json(row.args),
        kwargs=_json(row.kwargs),
        headers=_json(row.headers),
        raw_body=row.raw_body,
        raw_body_encoding=row.raw_body_encoding,
        replayable=bool(row.replayable),
        exception_type=row.exception_type,
        exception_message=row.exception_message,
        traceback=row.traceback,
        attempts=row.attempts,
        history=tuple(_json(row.history) or ()),
        first_failed_at=utc(row.first_failed_at),
        last_failed_at=utc(row.last_failed_at),
        created_at=utc(row.created_at),
        replayed_at=utc(row.replayed_at),
        replay_task_id=row.replay_task_id,
        replay_count=row.replay_count,
    )


def as_dict(letter: DeadLetter) -> dict[str, Any]:
    """``letter`` as plain JSON values (datetimes as ISO 8601 strings), for printing."""
    out = dataclasses.asdict(letter)
    for name, value in out.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, bytes):
            out[name] = base64.b64encode(value).decode("ascii")
    out["history"] = list(letter.history)
    out["why_not_replayable"] = letter.why_not_replayable()
    return out
