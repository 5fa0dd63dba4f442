"""Stripe-style HTTP idempotency: ``Idempotency-Key`` for web handlers and ASGI apps.

* :func:`idempotent_execute` runs a handler's work once per key, with a sync or async
  SQLAlchemy session, committing its effects together with the stored result;
* :class:`IdempotencyMiddleware` does the same for whole requests of any ASGI app
  (Starlette, FastAPI), replaying the stored status, headers and body.

Same key and same request: the stored answer. Same key, different request:
:class:`~celery_reliable.IdempotencyKeyReused` (422). Same key while the first request
runs: :class:`~celery_reliable.IdempotencyInProgress` (409). Failures and server errors
are not stored. Keys expire after ``ttl``; the ``celery_reliable.cleanup_http_idempotency``
beat job deletes them.
"""

from __future__ import annotations

from .execute import DEFAULT_LOCK_TIMEOUT, DEFAULT_TTL, REPLAYED_HEADER, idempotent_execute
from .fingerprint import check_key, request_fingerprint, storable, value_fingerprint
from .middleware import IdempotencyMiddleware
from .store import StoredResponse, delete_expired, http_idempotency

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_TTL",
    "REPLAYED_HEADER",
    "IdempotencyMiddleware",
    "StoredResponse",
    "check_key",
    "delete_expired",
    "http_idempotency",
    "idempotent_execute",
    "request_fingerprint",
    "storable",
    "value_fingerprint",
]
