"""Durable ranges of fencing tokens, reserved in the database (hi/lo allocation).

Redis hands out fencing tokens; with a database configured it may only hand out tokens
inside a range the database reserved first. A reservation is one upsert that moves the
name's ``reserved`` high-water mark up and returns the new range. Every token ever handed
out is at or below ``reserved``, so when Redis loses its data the next range, and every
token after it, is above all tokens seen before. Tokens are microseconds of server time,
so one reservation covers :data:`BLOCK_US` (a minute) of a name's use.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func

from ..errors import ConfigurationError
from ..schema import fence_tokens

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: Width of one reserved range, in token units (server microseconds).
BLOCK_US = 60_000_000


def reserve(engine: Engine, name: str, wanted: int) -> tuple[int, int]:
    """Reserve a range of tokens covering ``wanted`` for lock ``name``.

    Args:
        engine: the database holding ``reliable_fence_tokens`` (run ``reliable migrate``).
        name: the lock's name.
        wanted: the token the lock needs to hand out next.

    Returns:
        ``(floor, ceiling)``: every token handed out from now on is above ``floor`` (which
        is at least every token reserved before) and at most ``ceiling``.
    """
    table = fence_tokens
    now = datetime.now(timezone.utc)
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise ConfigurationError("fence_db", f"fencing-token reservations need PostgreSQL or SQLite, not {dialect}")
    from sqlalchemy.dialects import postgresql, sqlite

    upsert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    greatest = func.greatest if dialect == "postgresql" else func.max
    stmt = upsert(table).values(name=name, reserved=wanted + BLOCK_US, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"reserved": greatest(table.c.reserved, wanted) + BLOCK_US, "updated_at": now},
    ).returning(table.c.reserved)
    with engine.begin() as conn:
        ceiling = int(conn.execute(stmt).scalar_one())
    return ceiling - BLOCK_US, ceiling
