"""``idempotent_execute``: run a request's work once per ``Idempotency-Key``, sync or asyncio.

The three phases (after Brandur Leach's "Implementing Stripe-like Idempotency Keys in
Postgres"):

1. claim the key in its own short transaction, committed at once, so concurrent requests
   with the key see it and get :class:`~celery_reliable.IdempotencyInProgress` (409);
2. run ``fn``, which writes its effects through the caller's session;
3. store the result through the same session and commit: the effects and the stored
   result commit together, or neither does.

A failure (``fn`` raising, a 5xx response) rolls the session back and deletes the claim,
so a retry with the same key runs again.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

from ..config import duration_ms
from ..errors import IdempotencyInProgress, IdempotencyKeyReused
from . import store
from .fingerprint import check_endpoint, check_key, storable, value_fingerprint

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

logger = logging.getLogger("celery_reliable.http")

#: How long a completed key replays its response.
DEFAULT_TTL = timedelta(hours=24)

#: How long a running request holds its key; after that a retry may take it over (the
#: first request's commit then fails, so database effects still happen once).
DEFAULT_LOCK_TIMEOUT = timedelta(seconds=60)

_FORGET_FAILED = "could not free Idempotency-Key %r of %s; it frees itself when its lock runs out"

#: The header a replayed response carries.
REPLAYED_HEADER = "Idempotent-Replayed"


def _settle(claim: store.Claim, key: str, endpoint: str, fp: str) -> tuple[bool, Any]:
    """Turn a claim that is not ours into an answer: ``(True, stored result)`` or an error."""
    if claim.status == "mismatch":
        raise IdempotencyKeyReused(key, endpoint, claim.stored_fingerprint, fp)
    if claim.status == "busy":
        raise IdempotencyInProgress(key, endpoint, claim.retry_after)
    if claim.status == "replay":
        assert claim.response is not None
        return True, _replay(claim.response)
    return False, None


def _replay(stored: store.StoredResponse) -> Any:
    if stored.status_code is None:
        return stored.value()
    try:
        from starlette.responses import Response
    except ImportError as exc:  # pragma: no cover - a Response was stored, so Starlette was there
        raise ImportError("replaying a stored Response needs Starlette: pip install 'celery-reliable[http]'") from exc
    response = Response(status_code=stored.status_code)
    response.body = stored.raw_body()
    response.raw_headers = [*stored.raw_headers(), (REPLAYED_HEADER.lower().encode(), b"true")]
    return response


def _encode(result: Any) -> store.StoredResponse | None:
    """How a result is stored; ``None`` for a response that must not be (5xx, 429, ...)."""
    status = getattr(result, "status_code", None)
    body = getattr(result, "body", None)
    if isinstance(status, int) and isinstance(body, (bytes, bytearray, memoryview)):
        if not storable(status):
            return None
        return store.StoredResponse.of_response(status, list(getattr(result, "raw_headers", [])), bytes(body))
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        result = dump(mode="json")
    return store.StoredResponse.of_value(result)


def _prepare(key: str, endpoint: str, request_fingerprint: Any, ttl: Any, lock_timeout: Any) -> tuple[str, int, int]:
    check_key(key)
    check_endpoint(endpoint)
    fp = value_fingerprint(endpoint if request_fingerprint is None else request_fingerprint)
    ttl_ms = duration_ms("ttl", ttl)
    lock_ms = duration_ms("lock_timeout", lock_timeout)
    if ttl_ms < 1000 or lock_ms < 1000:
        raise ValueError(f"ttl and lock_timeout must be at least one second, got {ttl!r} and {lock_timeout!r}")
    return fp, ttl_ms, lock_ms


def _sync_engine(session: Session) -> Engine:
    from sqlalchemy.engine import Connection

    bind = session.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind


def _async_engine(session: AsyncSession) -> AsyncEngine:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    bind = session.bind
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    sync = session.sync_session.get_bind()
    return AsyncEngine(sync.engine if isinstance(sync, Connection) else sync)


def _is_async(session: object) -> bool:
    return type(session).__name__ == "AsyncSession" or hasattr(session, "sync_session")


@overload
def idempotent_execute(
    session: AsyncSession,
    key: str,
    endpoint: str,
    fn: Callable[[], Any],
    *,
    request_fingerprint: Any = None,
    ttl: float | timedelta = DEFAULT_TTL,
    lock_timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,
) -> Coroutine[Any, Any, Any]: ...


@overload
def idempotent_execute(
    session: Session,
    key: str,
    endpoint: str,
    fn: Callable[[], Any],
    *,
    request_fingerprint: Any = None,
    ttl: float | timedelta = DEFAULT_TTL,
    lock_timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,
) -> Any: ...


def idempotent_execute(
    session: Session | AsyncSession,
    key: str,
    endpoint: str,
    fn: Callable[[], Any],
    *,
    request_fingerprint: Any = None,
    ttl: float | timedelta = DEFAULT_TTL,
    lock_timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,
) -> Any:
    """Run ``fn`` once per ``(endpoint, key)``; later calls get its stored result.

    With an :class:`~sqlalchemy.ext.asyncio.AsyncSession` it returns a coroutine to
    await (``fn`` may then be sync or async); with a :class:`~sqlalchemy.orm.Session`
    it runs at once. ``fn`` takes no arguments and writes its effects through
    ``session``; do not commit inside it: the session is committed here, together with
    the stored result, so the effects and the record happen once or not at all.

    Args:
        session: the request's SQLAlchemy session (sync or async).
        key: the client's ``Idempotency-Key`` (1 to 255 printable ASCII characters).
        endpoint: the scope of the key (``"/payments"``); keys of other endpoints do not clash.
        fn: the work; returns a JSON value, a pydantic model (stored as its JSON dump,
            replayed as a dict) or a Starlette ``Response`` (replayed as a ``Response``
            with the header ``Idempotent-Replayed: true``).
        request_fingerprint: what identifies the request (the body, a dict, a pydantic
            model, or :func:`~celery_reliable.http.request_fingerprint`); the key
            replays only to an equal request. Default: the endpoint alone.
        ttl: how long the result is replayed (seconds or timedelta).
        lock_timeout: how long a running call holds the key before a retry may take it over.

    Returns:
        ``fn``'s result, or the stored one (equal as JSON) on a repeat.

    Raises:
        IdempotencyKeyReused: the key was used with a different request (answer 422).
        IdempotencyInProgress: a call with the key is still running (answer 409).
        IdempotencyKeyError: the key is empty, too long or not printable ASCII (400).
        SerializationError: ``fn``'s result is not JSON (nothing was committed).
        Exception: whatever ``fn`` raised (the session was rolled back, the key freed).
    """
    fp, ttl_ms, lock_ms = _prepare(key, endpoint, request_fingerprint, ttl, lock_timeout)
    if _is_async(session):
        return _execute_async(session, key, endpoint, fn, fp, ttl_ms, lock_ms)  # type: ignore[arg-type]
    return _execute_sync(session, key, endpoint, fn, fp, ttl_ms, lock_ms)  # type: ignore[arg-type]


def _execute_sync(
    session: Session, key: str, endpoint: str, fn: Callable[[], Any], fp: str, ttl_ms: int, lock_ms: int
) -> Any:
    engine = _sync_engine(session)
    with engine.begin() as conn:
        claim = store.begin(conn, endpoint, key, fp, ttl_ms, lock_ms)
    done, stored = _settle(claim, key, endpoint, fp)
    if done:
        return stored
    try:
        result = fn()
        response = _encode(result)
        if response is not None and store.complete(session.connection(), endpoint, key, claim.owner, response):
            session.commit()
            return result
    except BaseException:
        session.rollback()
        _forget_sync(engine, endpoint, key, claim.owner)
        raise
    session.rollback()  # nothing of this call is kept
    if response is not None:  # our lock ran out and a retry took the key over: its answer stands
        raise IdempotencyInProgress(key, endpoint, 0.0)
    _forget_sync(engine, endpoint, key, claim.owner)  # a response that must not be stored (5xx)
    return result


def _forget_sync(engine: Engine, endpoint: str, key: str, owner: str) -> None:
    try:
        with engine.begin() as conn:
            store.abandon(conn, endpoint, key, owner)
    except Exception:  # the lock runs out by itself
        logger.exception(_FORGET_FAILED, key, endpoint)


async def _execute_async(
    session: AsyncSession, key: str, endpoint: str, fn: Callable[[], Any], fp: str, ttl_ms: int, lock_ms: int
) -> Any:
    engine = _async_engine(session)
    async with engine.begin() as conn:
        claim = await conn.run_sync(store.begin, endpoint, key, fp, ttl_ms, lock_ms)
    done, stored = _settle(claim, key, endpoint, fp)
    if done:
        return stored
    owner = claim.owner
    try:
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        response = _encode(result)
        if response is not None:
            stored_it = await session.run_sync(lambda s: store.complete(s.connection(), endpoint, key, owner, response))
            if stored_it:
                await session.commit()
                return result
    except BaseException:
        await session.rollback()
        await _forget_async(engine, endpoint, key, owner)
        raise
    await session.rollback()
    if response is not None:
        raise IdempotencyInProgress(key, endpoint, 0.0)
    await _forget_async(engine, endpoint, key, owner)
    return result


async def _forget_async(engine: AsyncEngine, endpoint: str, key: str, owner: str) -> None:
    try:
        async with engine.begin() as conn:
            await conn.run_sync(store.abandon, endpoint, key, owner)
    except Exception:
        logger.exception(_FORGET_FAILED, key, endpoint)
