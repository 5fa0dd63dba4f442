"""What identifies an HTTP request, and which keys and responses are acceptable."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from ..errors import IdempotencyKeyError
from ..jsoncodec import dumps

#: Longest ``Idempotency-Key`` accepted (Stripe allows 255 characters).
MAX_KEY_LENGTH = 255

#: Longest endpoint (scope) name stored.
MAX_ENDPOINT_LENGTH = 512

#: Statuses never stored besides 5xx: they say "not now", not "this is the answer".
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})


def check_key(key: object) -> str:
    """Return ``key`` if it is a usable idempotency key.

    A key is 1 to :data:`MAX_KEY_LENGTH` printable ASCII characters (a UUID is the usual
    choice); anything else is refused rather than silently normalised.

    Raises:
        IdempotencyKeyError: for a missing, empty, too long or non-printable key.
    """
    if not isinstance(key, str) or not key:
        raise IdempotencyKeyError(f"an Idempotency-Key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyError(f"an Idempotency-Key is at most {MAX_KEY_LENGTH} characters, got {len(key)}", key)
    if not key.isascii() or not key.isprintable():
        raise IdempotencyKeyError(f"an Idempotency-Key holds printable ASCII characters only, got {key!r}", key)
    return key


def check_endpoint(endpoint: object) -> str:
    """Return ``endpoint`` if it can scope keys (a non-empty str of at most 512 characters).

    Raises:
        ValueError: otherwise.
    """
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise ValueError(f"endpoint must be a str of 1 to {MAX_ENDPOINT_LENGTH} characters, got {endpoint!r}")
    return endpoint


def _frame(digest: Any, part: bytes) -> None:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    digest.update(len(part).to_bytes(8, "big"))
    digest.update(part)


def request_fingerprint(
    method: str,
    path: str,
    body: bytes = b"",
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    query: str | bytes = b"",
) -> str:
    """SHA-256 of what makes two HTTP requests "the same request".

    Args:
        method: the HTTP method (case-insensitive).
        path: the request path.
        body: the raw request body.
        headers: the headers that take part (names are case-insensitive; order does not matter).
        query: the raw query string.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256()
    for part in (method.upper(), path):
        _frame(digest, part.encode("utf-8", "surrogateescape"))
    _frame(digest, query if isinstance(query, bytes) else query.encode("latin-1"))
    _frame(digest, bytes(body))
    pairs = sorted(
        (
            (n if isinstance(n, bytes) else n.encode("latin-1")).lower(),
            v if isinstance(v, bytes) else v.encode("latin-1"),
        )
        for n, v in headers
    )
    for name, value in pairs:
        _frame(digest, name)
        _frame(digest, value)
    return digest.hexdigest()


def value_fingerprint(value: Any) -> str:
    """SHA-256 of a request as given to :func:`~celery_reliable.http.idempotent_execute`.

    ``bytes`` and ``str`` are hashed as they are; a pydantic model as its JSON dump; any
    other value as canonical JSON (so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` agree).

    Raises:
        SerializationError: for a value JSON cannot hold.
    """
    if isinstance(value, bytes):
        raw = b"b:" + value
    elif isinstance(value, str):
        raw = b"s:" + value.encode("utf-8", "surrogatepass")
    else:
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            value = dump(mode="json")
        raw = b"j:" + dumps(value, where="request_fingerprint").encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


def storable(status: int) -> bool:
    """Whether a response with ``status`` is stored and replayed.

    Server errors (5xx) and transient refusals (408, 409, 425, 429) are not: the client
    should retry them with the same key and get a real answer.
    """
    return status < 500 and status not in TRANSIENT_STATUSES
