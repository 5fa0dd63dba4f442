"""``enqueue``: write a message to the outbox inside the caller's transaction.

Nothing is published here. The row commits or rolls back with the business data; a relay
(:mod:`.relay`) publishes it after the commit, at least once, with the returned id as the
task id, so consumers deduplicate on ``self.request.id``.

Decisions:

- Arguments and options are stored as canonical JSON (never pickle): a value JSON cannot
  hold fails here, naming it, before anything is written. Arguments larger than
  ``reliable_max_message_bytes`` raise :class:`~celery_reliable.errors.MessageTooLarge`.
- ``countdown`` and a numeric ``expires`` are turned into absolute times now: they count
  from the business transaction, not from whenever the relay gets to the row.
- ``ordering_key``: messages with the same key are published one at a time in commit
  order. On PostgreSQL the writer takes a transaction-scoped advisory lock on the key
  before the row gets its id, so writers of one key commit one after the other and id
  order is commit order (the price: concurrent transactions enqueueing the same key wait
  for each other's commit). SQLite serialises all writers anyway.
- Listen mode (``reliable_outbox_listen``, or ``notify=True``): on PostgreSQL the insert
  also runs ``pg_notify('reliable_outbox', '')`` (in its ``RETURNING`` clause, so no extra
  round trip). PostgreSQL delivers it only if the transaction commits. NOTIFY takes a
  cluster-wide lock while the transaction commits, so notifying commits are serialised;
  leave listen mode off when enqueue throughput matters more than latency.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from .. import jsoncodec
from ..errors import MessageTooLarge
from ..sessions import connection_of
from .model import CHANNEL, PENDING, outbox
from .settings import outbox_config

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.sql import Executable

#: Options that make no sense in a stored message (they name live objects of this process).
_REFUSED_OPTIONS = frozenset({"producer", "connection", "router", "add_to_parent", "publisher"})
#: Longest ordering key (the column's width).
MAX_KEY_CHARS = 255


def enqueue(
    session: Session | Connection,
    task: Any,
    args: Any = None,
    kwargs: Any = None,
    *,
    ordering_key: str | None = None,
    app: Celery | None = None,
    notify: bool | None = None,
    **options: Any,
) -> str:
    """Add a message to the outbox in ``session``'s transaction; a relay publishes it after commit.

    Args:
        session: a SQLAlchemy ``Session`` or ``Connection`` in the business transaction.
        task: a Celery signature (``charge.s(order_id, 10)``), a task, or a task name.
        args: positional arguments (not with a signature, which carries its own).
        kwargs: keyword arguments (not with a signature).
        ordering_key: messages with the same key are published in commit order, one at a time.
        app: the Celery app whose settings apply (default: the signature's app, else the current app).
        notify: send ``NOTIFY reliable_outbox`` (PostgreSQL); default ``reliable_outbox_listen``.
        **options: ``apply_async`` options (``queue``, ``countdown``, ``priority``, ``task_id``, ...).

    Returns:
        The message id: the id the task will be published with.

    Raises:
        SerializationError: arguments or options JSON cannot hold.
        MessageTooLarge: arguments larger than ``reliable_max_message_bytes``.
        TypeError: a canvas (chain, group, chord), or args given with a signature.
        ValueError: a wrong ordering key or option.
    """
    conn = connection_of(session)
    message_id, statements = _statements(conn.dialect.name, task, args, kwargs, ordering_key, app, notify, options)
    for stmt in statements:
        conn.execute(stmt)
    return message_id


async def aenqueue(
    session: AsyncSession | AsyncConnection,
    task: Any,
    args: Any = None,
    kwargs: Any = None,
    *,
    ordering_key: str | None = None,
    app: Celery | None = None,
    notify: bool | None = None,
    **options: Any,
) -> str:
    """:func:`enqueue` for an ``AsyncSession`` or ``AsyncConnection`` (same arguments and errors)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    conn = await session.connection() if isinstance(session, AsyncSession) else session
    message_id, statements = _statements(conn.dialect.name, task, args, kwargs, ordering_key, app, notify, options)
    for stmt in statements:
        await conn.execute(stmt)
    return message_id


def _statements(
    dialect: str,
    task: Any,
    args: Any,
    kwargs: Any,
    ordering_key: str | None,
    app: Celery | None,
    notify: bool | None,
    options: dict[str, Any],
) -> tuple[str, list[Executable]]:
    """The message id and the statements that write the message (lock, insert)."""
    name, args, kwargs, options, app = _unpack(task, args, kwargs, options, app)
    cfg = outbox_config(app)
    message_id = str(options.pop("task_id", None) or uuid.uuid4())
    args_json = jsoncodec.dumps(list(args or ()), where="args")
    kwargs_json = jsoncodec.dumps(dict(kwargs or {}), where="kwargs")
    options_json = jsoncodec.dumps(_absolute(options), where="options")
    if cfg.max_message_bytes is not None:
        size = len(args_json.encode("utf-8", "surrogatepass")) + len(kwargs_json.encode("utf-8", "surrogatepass"))
        if size > cfg.max_message_bytes:
            raise MessageTooLarge(name, size, cfg.max_message_bytes)
    statements: list[Executable] = []
    if ordering_key is not None:
        _check_key(ordering_key)
        if dialect == "postgresql":
            statements.append(select(func.pg_advisory_xact_lock(key_lock_id(ordering_key))))
    stmt = insert(outbox).values(
        message_id=message_id,
        task_name=name,
        args=args_json,
        kwargs=kwargs_json,
        options=options_json,
        ordering_key=ordering_key,
        state=PENDING,
        attempts=0,
        created_at=datetime.now(timezone.utc),
    )
    if (cfg.listen if notify is None else notify) and dialect == "postgresql":
        stmt = stmt.returning(func.pg_notify(CHANNEL, ""))
    statements.append(stmt)
    return message_id, statements


def _unpack(
    task: Any, args: Any, kwargs: Any, options: dict[str, Any], app: Celery | None
) -> tuple[str, Any, Any, dict[str, Any], Celery]:
    from celery import Signature, current_app

    if isinstance(task, Signature):
        if task.get("subtask_type") or type(task) is not Signature:
            raise TypeError(f"the outbox stores single task signatures, not a {type(task).__name__} canvas")
        if args is not None or kwargs is not None:
            raise TypeError("give args and kwargs in the signature, not beside it")
        merged = {**dict(task.options or {}), **options}
        return str(task.task), task.args, task.kwargs, merged, app or task.app
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"expected a signature, a task or a task name, got {task!r}")
    task_app = getattr(task, "_app", None) if not isinstance(task, str) else None
    return name, args, kwargs, dict(options), app or task_app or current_app


def _absolute(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with relative times made absolute (ISO 8601) and live objects refused."""
    refused = _REFUSED_OPTIONS.intersection(options)
    if refused:
        raise ValueError(f"option(s) {', '.join(sorted(refused))} cannot be stored in the outbox")
    out = dict(options)
    now = datetime.now(timezone.utc)
    countdown = out.pop("countdown", None)
    if countdown is not None:
        out["eta"] = now + timedelta(seconds=float(countdown))
    for field in ("eta", "expires"):
        value = out.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and field == "expires":
            out[field] = (now + timedelta(seconds=float(value))).isoformat()
        elif isinstance(value, datetime):
            out[field] = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return out


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise ValueError(f"an ordering key must be a str of 1-{MAX_KEY_CHARS} characters without NUL, got {key!r}")


def key_lock_id(ordering_key: str) -> int:
    """The signed 64-bit advisory-lock id writers of ``ordering_key`` serialise on."""
    digest = hashlib.sha256(f"reliable_outbox:{ordering_key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
