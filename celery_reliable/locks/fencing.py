"""Fenced writes: the protected resource refuses a write carrying an older fencing token.

A lock cannot stop a holder that paused (a GC pause, SIGSTOP, swapping, a slow network)
past its lease from writing after another process took the lock over. The resource has
to: every write carries the lock's :attr:`token`, the resource keeps the newest token it
accepted, and refuses older ones with :class:`~celery_reliable.errors.StaleFencingToken`.
An equal token is accepted (one holder writes several times).

- :func:`fenced_update` / :func:`fenced_upsert`: rows of a SQL table with a nullable
  ``BIGINT`` token column (``fence_token`` by default), through a SQLAlchemy Connection
  or ORM Session, on PostgreSQL or SQLite;
- :func:`fenced_set`: a value in a Redis hash (fields ``value`` and ``token``).

Tokens of RedisLock, Redlock and PostgresAdvisoryLock are all server microseconds (at
least), so a resource keeps accepting the next holder's writes when a task moves from
one lock backend to another (with server clocks in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, or_, select, update

from ..errors import ConfigurationError, StaleFencingToken
from ..scripts import script_for

#: Default name of the token column.
FENCE_COLUMN = "fence_token"


def _table(table: Any) -> Table:
    found = table if isinstance(table, Table) else getattr(table, "__table__", None)
    if not isinstance(found, Table):
        raise ConfigurationError("table", f"expected a SQLAlchemy Table or mapped class, got {table!r}")
    return found


def _column(tbl: Table, name: str, option: str) -> Any:
    try:
        return tbl.c[name]
    except KeyError:
        raise ConfigurationError(option, f"table {tbl.name!r} has no column {name!r}") from None


def _token(token: object) -> int:
    if not isinstance(token, int) or isinstance(token, bool) or token < 0:
        raise ConfigurationError("token", f"a fencing token is an int >= 0, got {token!r}")
    return token


def _condition(tbl: Table, where: Mapping[str, Any] | ColumnElement[bool]) -> ColumnElement[bool]:
    if not isinstance(where, Mapping):
        return where
    if not where:
        raise ConfigurationError("where", "name at least one column")
    return and_(*(_column(tbl, name, "where") == value for name, value in where.items()))


def _values(tbl: Table, values: Mapping[str, Any], column: str) -> dict[str, Any]:
    if column in values:
        raise ConfigurationError("values", f"{column!r} is set from the token; leave it out of values")
    for name in values:
        _column(tbl, name, "values")
    return dict(values)


def _refuse(conn: Any, tbl: Table, col: Any, cond: ColumnElement[bool], token: int, resource: str | None) -> int:
    """0 when no row matches ``cond``; else raise StaleFencingToken with the newest token stored."""
    current, rows = conn.execute(select(func.max(col), func.count()).select_from(tbl).where(cond)).one()
    if not rows:
        return 0
    raise StaleFencingToken(resource or f"{tbl.name} row", token, None if current is None else int(current))


def fenced_update(
    conn: Any,
    table: Any,
    where: Mapping[str, Any] | ColumnElement[bool],
    values: Mapping[str, Any],
    token: int,
    *,
    column: str = FENCE_COLUMN,
    resource: str | None = None,
) -> int:
    """Update rows only if the write's token is at least the one they hold, in one statement.

    Runs ``UPDATE table SET <values>, column = :token WHERE <where> AND (column IS NULL OR
    column <= :token)``. The check and the write are one statement: in PostgreSQL an
    UPDATE waits for a concurrent writer of the row to finish, then re-checks its WHERE
    against the newest row version (READ COMMITTED; REPEATABLE READ and SERIALIZABLE
    raise a serialization failure instead), and SQLite runs one writer at a time. So a
    newer holder's write landing between an old holder's check and write is impossible:
    the old write then matches no row and is refused.

    ``where`` should pick one row (or rows always written together): each matching row
    is fenced on its own. The write is part of the caller's transaction; run the rest of
    the holder's writes in that same transaction so a refusal rolls them back too.

    Args:
        conn: a SQLAlchemy Connection or ORM Session (the update goes through Core: expire
            ORM objects of these rows afterwards).
        table: a Table or a mapped class.
        where: ``{"column": value, ...}`` (equalities) or a SQLAlchemy condition.
        values: the new values, by column name.
        token: the writer's fencing token (``lock.token``).
        column: the token column (nullable BIGINT; NULL means never fenced).
        resource: how the error names the row (default ``"<table> row"``).

    Returns:
        The number of rows updated; 0 when no row matches ``where`` (nothing to refuse).

    Raises:
        StaleFencingToken: rows match but hold a newer token (``current`` is the newest).
        ConfigurationError: an unknown column, a bad token, or the token column in values.
    """
    tbl = _table(table)
    token = _token(token)
    col = _column(tbl, column, "column")
    cond = _condition(tbl, where)
    fields = {**_values(tbl, values, column), column: token}
    stmt = update(tbl).where(cond, or_(col.is_(None), col <= token)).values(fields)
    updated = int(conn.execute(stmt).rowcount)
    if updated:
        return updated
    return _refuse(conn, tbl, col, cond, token, resource)


def fenced_upsert(
    conn: Any,
    table: Any,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    token: int,
    *,
    column: str = FENCE_COLUMN,
    resource: str | None = None,
) -> None:
    """Insert a row, or update it if the write's token is at least the one it holds (PostgreSQL, SQLite).

    One ``INSERT ... ON CONFLICT (<key>) DO UPDATE ... WHERE column IS NULL OR column <=
    excluded.column``: the conflicting row is locked and its token checked atomically.

    Args:
        conn: a SQLAlchemy Connection or ORM Session.
        table: a Table or a mapped class.
        key: the row's primary key or another unique key, ``{"column": value, ...}``.
        values: the other columns to write.
        token: the writer's fencing token.
        column: the token column.
        resource: how the error names the row.

    Raises:
        StaleFencingToken: the row holds a newer token.
        ConfigurationError: another database, an unknown column or a bad token.
    """
    tbl = _table(table)
    token = _token(token)
    col = _column(tbl, column, "column")
    fields = _values(tbl, values, column)
    cond = _condition(tbl, key)
    bind = conn if hasattr(conn, "dialect") else conn.get_bind()
    from sqlalchemy.dialects import postgresql, sqlite

    inserts: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    insert = inserts.get(bind.dialect.name)
    if insert is None:
        raise ConfigurationError("conn", f"fenced_upsert needs PostgreSQL or SQLite, not {bind.dialect.name}")
    ins = insert(tbl).values({**key, **fields, column: token})
    stmt = ins.on_conflict_do_update(
        index_elements=[_column(tbl, name, "key") for name in key],
        set_={**{name: ins.excluded[name] for name in fields}, column: ins.excluded[column]},
        where=or_(col.is_(None), col <= ins.excluded[column]),
    )
    if conn.execute(stmt.returning(col)).first() is None:  # (rowcount of an INSERT is not reliable)
        _refuse(conn, tbl, col, cond, token, resource)


def fenced_set(
    client: Any, key: str, value: str | bytes | int | float, token: int, *, resource: str | None = None
) -> None:
    """Store ``value`` in the Redis hash ``key`` unless it holds a newer token (one Lua script).

    The hash has two fields, ``value`` and ``token`` (read it with ``HGET key value``).
    Tokens are compared exactly, as decimal integers of any size.

    Args:
        client: a ``redis.Redis``.
        key: the hash's key.
        value: the value to store.
        token: the writer's fencing token.
        resource: how the error names the value (default: the key).

    Raises:
        StaleFencingToken: the hash holds a newer token (``current`` is that token).
        ConfigurationError: a bad token.
    """
    token = _token(token)
    stored, current = script_for(client, "fenced_set")(keys=[key], args=[value, str(token)])
    if not int(stored):
        raise StaleFencingToken(resource or key, token, int(current))
