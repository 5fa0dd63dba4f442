"""``IdempotencyMiddleware``: Stripe-style ``Idempotency-Key`` for any ASGI app.

A plain ASGI middleware (no Starlette import): mount it on Starlette, FastAPI or any
ASGI application. For a request with the header and one of ``methods``:

* first time: the key is claimed (committed at once), the request runs, and its
  response is stored unless it is a server error (5xx) or a transient refusal (408, 409,
  425, 429) or larger than ``max_body_bytes``;
* same key, same request (method, path, query, body, ``fingerprint_headers``), after
  completion: the stored status, headers and body, plus ``Idempotent-Replayed: true``;
* same key, different request: ``422`` (``application/problem+json``);
* same key while the first request still runs: ``409`` with ``Retry-After``.

Requests without the header pass through (or get ``400`` with ``required=True``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..config import duration_ms
from ..errors import IdempotencyKeyError
from . import store
from .execute import _FORGET_FAILED, DEFAULT_LOCK_TIMEOUT, DEFAULT_TTL, REPLAYED_HEADER
from .fingerprint import MAX_ENDPOINT_LENGTH, check_key, request_fingerprint, storable

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("celery_reliable.http")

#: Largest response body stored for replay; a larger response is sent but not stored.
DEFAULT_MAX_BODY_BYTES = 1 << 20

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"})


class _Database:
    """Runs the store's sync operations on an AsyncEngine, or on an Engine in a thread."""

    def __init__(self, engine: Engine | AsyncEngine | str) -> None:
        self._engine = engine

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        engine = self._engine
        if isinstance(engine, str):
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = self._engine = create_async_engine(engine)
        if hasattr(engine, "sync_engine"):  # an AsyncEngine
            async with engine.begin() as conn:  # type: ignore[union-attr]
                return await conn.run_sync(fn, *args)
        return await asyncio.to_thread(self._run_sync, engine, fn, *args)

    @staticmethod
    def _run_sync(engine: Engine, fn: Callable[..., Any], *args: Any) -> Any:
        with engine.begin() as conn:
            return fn(conn, *args)


class IdempotencyMiddleware:
    """Replay responses of requests sent again with the same ``Idempotency-Key``.

    Args:
        app: the ASGI application.
        engine: where keys are stored: an ``AsyncEngine``, an ``Engine`` (used in a
            thread) or a database URL for ``create_async_engine``; the database needs
            celery-reliable's migrations (``celery reliable migrate``).
        methods: the methods that take a key; others pass through.
        header: the request header holding the key.
        ttl: how long a response is replayed (seconds or timedelta).
        lock_timeout: how long a running request holds its key; after that (its server
            died) a retry with the same request may take the key over.
        max_body_bytes: largest response body stored.
        fingerprint_headers: request headers that are part of "the same request".
        scope: a function of the ASGI scope returning who the key belongs to (a user or
            tenant id), so two clients' keys never meet; default: one key space.
        required: answer ``400`` to a request of ``methods`` without the header.
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine | AsyncEngine | str,
        *,
        methods: Iterable[str] = ("POST", "PATCH"),
        header: str = "Idempotency-Key",
        ttl: float | timedelta = DEFAULT_TTL,
        lock_timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fingerprint_headers: Iterable[str] = ("content-type",),
        scope: Callable[[Scope], str | None] | None = None,
        required: bool = False,
    ) -> None:
        self.app = app
        self._db = _Database(engine)
        self.methods = frozenset(m.upper() for m in methods)
        self.header = header.lower().encode("latin-1")
        self.ttl_ms = duration_ms("ttl", ttl)
        self.lock_ms = duration_ms("lock_timeout", lock_timeout)
        if self.ttl_ms < 1000 or self.lock_ms < 1000:
            raise ValueError(f"ttl and lock_timeout must be at least one second, got {ttl!r} and {lock_timeout!r}")
        self.max_body_bytes = max_body_bytes
        self.fingerprint_headers = frozenset(h.lower().encode("latin-1") for h in fingerprint_headers)
        self.scope = scope
        self.required = required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        raw_key = next((v for n, v in scope["headers"] if n.lower() == self.header), None)
        if raw_key is None:
            if self.required:
                await _problem(send, 400, "Idempotency-Key required", f"send a {self.header.decode()} header")
                return
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        try:
            check_key(key)
        except IdempotencyKeyError as exc:
            await _problem(send, 400, "Invalid Idempotency-Key", str(exc))
            return
        messages, body = await _read_body(receive)
        headers = [(n.lower(), v) for n, v in scope["headers"] if n.lower() in self.fingerprint_headers]
        fp = request_fingerprint(scope["method"], scope["path"], body, headers, scope.get("query_string", b""))
        endpoint = self._endpoint(scope)
        claim = await self._db.run(store.begin, endpoint, key, fp, self.ttl_ms, self.lock_ms)
        if claim.status == "replay":
            await _replay(send, claim.response)
        elif claim.status == "mismatch":
            await _problem(
                send,
                422,
                "Idempotency-Key reused",
                f"this key was already used for {endpoint} with a different request; use a new key for a new request",
            )
        elif claim.status == "busy":
            await _problem(
                send,
                409,
                "Request in progress",
                "a request with this key is still being processed; retry later to get its response",
                retry_after=claim.retry_after,
            )
        else:
            await self._run(scope, _replaying(messages, receive), send, endpoint, key, claim.owner)

    def _endpoint(self, scope: Scope) -> str:
        endpoint = f"{scope['method']} {scope['path']}"
        owner = self.scope(scope) if self.scope is not None else None
        if owner:
            endpoint = f"{owner}|{endpoint}"
        if len(endpoint) > MAX_ENDPOINT_LENGTH:  # keep the scope exact but storable
            from ..jsoncodec import sha256_hex

            endpoint = f"{endpoint[:400]}#{sha256_hex(endpoint)}"
        return endpoint

    async def _run(self, scope: Scope, receive: Receive, send: Send, endpoint: str, key: str, owner: str) -> None:
        capture = _Capture(send, self.max_body_bytes)
        try:
            await self.app(scope, receive, capture)
        except BaseException:
            await self._forget(endpoint, key, owner)
            raise
        response = capture.stored()
        if response is None:
            await self._forget(endpoint, key, owner)
            return
        if not await self._db.run(store.complete, endpoint, key, owner, response):
            logger.warning("Idempotency-Key %r of %s was taken over while its request ran; not stored", key, endpoint)

    async def _forget(self, endpoint: str, key: str, owner: str) -> None:
        try:
            await self._db.run(store.abandon, endpoint, key, owner)
        except Exception:
            logger.exception(_FORGET_FAILED, key, endpoint)


class _Capture:
    """Passes the response through while keeping a copy to store."""

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self._limit = limit
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunk = bytes(message.get("body", b""))
            self._size += len(chunk)
            if self._size <= self._limit:
                self._chunks.append(chunk)
            if not message.get("more_body", False):
                self._complete = True
        await self._send(message)

    def stored(self) -> store.StoredResponse | None:
        """The response to store, or ``None`` when it must not be (or cannot be) replayed."""
        if self.status is None or not self._complete or not storable(self.status):
            return None
        if self._size > self._limit:
            logger.warning("a response of %d bytes is over max_body_bytes=%d: not stored", self._size, self._limit)
            return None
        headers = [(n, v) for n, v in self.headers if n.lower() not in _HOP_BY_HOP]
        return store.StoredResponse.of_response(self.status, headers, b"".join(self._chunks))


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """Read the whole request body (it is part of the fingerprint)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands the app the messages already read, then the real ones."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _replay(send: Send, stored: store.StoredResponse | None) -> None:
    assert stored is not None and stored.status_code is not None
    headers = [*stored.raw_headers(), (REPLAYED_HEADER.lower().encode(), b"true")]
    await send({"type": "http.response.start", "status": stored.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": stored.raw_body()})


async def _problem(send: Send, status: int, title: str, detail: str, retry_after: float | None = None) -> None:
    """Answer with an RFC 9457 problem document."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        # the first request usually finishes soon; its lock's end is only the worst case
        headers.append((b"retry-after", str(max(1, math.ceil(min(retry_after, 1.0)))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
