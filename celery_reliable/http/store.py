"""The table of HTTP idempotency keys and its atomic operations (sync, on a Connection).

A key's row goes through two states:

* ``in_progress``: a request holds it (``owner``) until ``locked_until``; others get 409.
  A holder that dies leaves the row to be taken over once its lock runs out, by a
  request with the same fingerprint.
* ``completed``: the stored response, replayed to the same request until ``expires_at``.

A failed request deletes its row, so nothing about it is remembered.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text, and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..jsoncodec import dumps, loads
from ..schema import metadata

IN_PROGRESS = "in_progress"
COMPLETED = "completed"

#: Stored HTTP idempotency keys, scoped by endpoint (created by migration 0007).
http_idempotency = Table(
    "reliable_http_idempotency",
    metadata,
    Column("endpoint", String(512), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("owner", String(64), nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("headers", Text, nullable=True),
    Column("body", Text, nullable=True),
    Column("body_encoding", String(16), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_reliable_http_idempotency_expires_at", "expires_at"),
)

_t = http_idempotency


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class StoredResponse:
    """What a completed key replays.

    Attributes:
        status_code: the HTTP status, or ``None`` for a value returned by a function.
        headers: response headers as ``(name, value)`` strings (latin-1).
        body: the body as stored (JSON text, or base64 of the raw bytes).
        body_encoding: ``"json"`` or ``"base64"``.
    """

    status_code: int | None
    headers: tuple[tuple[str, str], ...]
    body: str
    body_encoding: str

    @classmethod
    def of_value(cls, value: Any) -> StoredResponse:
        """Store a JSON value (a function's result).

        Raises:
            SerializationError: for a value JSON cannot hold.
        """
        return cls(None, (), dumps(value, where="result"), "json")

    @classmethod
    def of_response(cls, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> StoredResponse:
        """Store a raw HTTP response."""
        pairs = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)
        return cls(status_code, pairs, base64.b64encode(body).decode("ascii"), "base64")

    def value(self) -> Any:
        """The stored JSON value (for ``body_encoding == "json"``)."""
        return loads(self.body)

    def raw_body(self) -> bytes:
        """The body as bytes (JSON text is UTF-8 encoded)."""
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI byte pairs."""
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]


@dataclass(frozen=True)
class Claim:
    """The answer of :func:`begin`.

    Attributes:
        status: ``started`` (run the request; ``owner`` holds the row), ``replay``
            (``response`` is the stored answer), ``busy`` (another request holds the key
            for ``retry_after`` seconds more) or ``mismatch`` (the key was used with a
            request whose fingerprint is ``stored_fingerprint``).
    """

    status: Literal["started", "replay", "busy", "mismatch"]
    owner: str = ""
    response: StoredResponse | None = None
    retry_after: float = 0.0
    stored_fingerprint: str = ""


def _take(conn: Connection, values: dict[str, Any], now: datetime) -> bool:
    """Insert the in-progress row, or take over an expired one or a dead holder's; ``True`` if taken."""
    takeover = or_(
        _t.c.expires_at <= now,
        and_(_t.c.state == IN_PROGRESS, _t.c.locked_until <= now, _t.c.fingerprint == values["fingerprint"]),
    )
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = upsert(_t).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_t.c.endpoint, _t.c.key],
            set_={k: stmt.excluded[k] for k in values if k not in ("endpoint", "key")},
            where=takeover,
        ).returning(_t.c.key)
        return conn.execute(stmt).first() is not None
    # Other databases: clear what may be taken over, then insert under a savepoint.
    conn.execute(delete(_t).where(_t.c.endpoint == values["endpoint"], _t.c.key == values["key"], takeover))
    try:
        with conn.begin_nested():
            conn.execute(insert(_t).values(**values))
    except IntegrityError:
        return False
    return True


def begin(conn: Connection, endpoint: str, key: str, fingerprint: str, ttl_ms: int, lock_ms: int) -> Claim:
    """Claim ``key`` for a request, or say why not; commit right after (the caller's ``begin()`` block).

    The claim must be committed before the request runs, so concurrent requests see it.
    """
    for _ in range(3):
        now = _utcnow()
        owner = uuid.uuid4().hex
        values = {
            "endpoint": endpoint,
            "key": key,
            "fingerprint": fingerprint,
            "state": IN_PROGRESS,
            "owner": owner,
            "status_code": None,
            "headers": None,
            "body": None,
            "body_encoding": None,
            "created_at": now,
            "completed_at": None,
            "locked_until": now + timedelta(milliseconds=lock_ms),
            "expires_at": now + timedelta(milliseconds=ttl_ms),
        }
        if _take(conn, values, now):
            return Claim("started", owner=owner)
        row = conn.execute(select(_t).where(_t.c.endpoint == endpoint, _t.c.key == key)).first()
        if row is None:  # the holder failed and deleted it between our two statements
            continue
        if row.fingerprint != fingerprint:
            return Claim("mismatch", stored_fingerprint=row.fingerprint)
        if row.state == COMPLETED:
            headers = tuple((n, v) for n, v in loads(row.headers or "[]"))
            stored = StoredResponse(row.status_code, headers, row.body, row.body_encoding)
            return Claim("replay", response=stored)
        left = (_aware(row.locked_until) - now).total_seconds() if row.locked_until is not None else 1.0
        return Claim("busy", retry_after=max(left, 0.0))
    return Claim("busy", retry_after=1.0)


def complete(conn: Connection, endpoint: str, key: str, owner: str, response: StoredResponse) -> bool:
    """Store the response of the request holding ``key``, in the caller's transaction.

    Returns:
        ``False`` if ``owner`` no longer holds the key (its lock ran out and another
        request took it over): the caller must roll back.
    """
    result = conn.execute(
        update(_t)
        .where(_t.c.endpoint == endpoint, _t.c.key == key, _t.c.owner == owner, _t.c.state == IN_PROGRESS)
        .values(
            state=COMPLETED,
            owner=None,
            locked_until=None,
            status_code=response.status_code,
            headers=dumps([list(h) for h in response.headers], where="headers"),
            body=response.body,
            body_encoding=response.body_encoding,
            completed_at=_utcnow(),
        )
    )
    return bool(result.rowcount == 1)


def abandon(conn: Connection, endpoint: str, key: str, owner: str) -> None:
    """Forget a request that failed, so a retry with the same key runs again."""
    conn.execute(
        delete(_t).where(_t.c.endpoint == endpoint, _t.c.key == key, _t.c.owner == owner, _t.c.state == IN_PROGRESS)
    )


def delete_expired(engine: Engine, batch: int = 1000) -> int:
    """Delete expired keys in batches of ``batch``; returns how many went."""
    from sqlalchemy import tuple_

    total = 0
    while True:
        with engine.begin() as conn:
            expired = select(_t.c.endpoint, _t.c.key).where(_t.c.expires_at <= _utcnow()).limit(batch)
            n = conn.execute(delete(_t).where(tuple_(_t.c.endpoint, _t.c.key).in_(expired))).rowcount
        total += n
        if n < batch:
            return total
