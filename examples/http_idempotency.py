"""Stripe-style ``Idempotency-Key`` on a Starlette app: replay, 422, 409, and 5xx not stored.

From the repository root, with PostgreSQL migrated (``celery -A proj reliable migrate``)::

    python -m examples.http_idempotency [postgresql+psycopg://root@127.0.0.1/test]

No server is started: httpx drives the app in-process. Two endpoints show the two forms:

* ``POST /payments`` uses :func:`idempotent_execute` inside the handler (the quick start's
  ``return await idempotent_execute(db, idempotency_key, "/payments", process)``): the
  payment row and the stored result commit together;
* ``POST /refunds`` is protected as a whole by :class:`IdempotencyMiddleware`, which
  replays the stored status, headers and body.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from celery_reliable.errors import IdempotencyInProgress, IdempotencyKeyReused
from celery_reliable.http import IdempotencyMiddleware, idempotent_execute

URL = sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://root@127.0.0.1/test"


def build_app(url: str) -> Starlette:
    """The demo app: one handler-level and one middleware-level idempotent endpoint."""
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    refunds = {"attempts": 0}

    async def create_payment(request: Request) -> JSONResponse:
        data = await request.json()
        idempotency_key = request.headers["Idempotency-Key"]
        async with sessions() as db:

            async def process() -> dict[str, Any]:
                await db.execute(text("CREATE TABLE IF NOT EXISTS demo_payments (key text PRIMARY KEY, amount int)"))
                await db.execute(
                    text("INSERT INTO demo_payments VALUES (:k, :a)"), {"k": idempotency_key, "a": data["amount"]}
                )
                await asyncio.sleep(0.3)  # the payment provider thinks
                return {"payment": f"pay_{idempotency_key[:8]}", "amount": data["amount"]}

            try:
                result = await idempotent_execute(db, idempotency_key, "/payments", process, request_fingerprint=data)
            except (IdempotencyKeyReused, IdempotencyInProgress) as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status_code)
        return JSONResponse(result, status_code=201)

    async def create_refund(request: Request) -> JSONResponse:
        refunds["attempts"] += 1
        if refunds["attempts"] == 1:  # the first attempt meets an outage: not stored, the retry runs
            return JSONResponse({"error": "bank unavailable"}, status_code=503)
        data = await request.json()
        return JSONResponse({"refund": f"re_{refunds['attempts']}", "amount": data["amount"]}, status_code=201)

    refund_app = Starlette(
        routes=[Route("/", create_refund, methods=["POST"])],
        middleware=[Middleware(IdempotencyMiddleware, engine=engine, methods=("POST",))],
    )
    return Starlette(routes=[Route("/payments", create_payment, methods=["POST"]), Mount("/refunds", refund_app)])


def show(label: str, response: httpx.Response) -> None:
    """Print one exchange."""
    replayed = " (replayed)" if response.headers.get("idempotent-replayed") else ""
    print(f"{label:<42} {response.status_code}{replayed} {response.text}")


async def main() -> None:
    """Send the requests and print what came back."""
    app = build_app(URL)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client:
        pay_key, refund_key = str(uuid.uuid4()), str(uuid.uuid4())
        pay = {"Idempotency-Key": pay_key}
        first, second = await asyncio.gather(
            client.post("/payments", json={"amount": 100}, headers=pay),
            client.post("/payments", json={"amount": 100}, headers=pay),
        )
        show("two payments at once, same key:", first)
        show("", second)
        show("the same payment again:", await client.post("/payments", json={"amount": 100}, headers=pay))
        show("same key, another amount:", await client.post("/payments", json={"amount": 999}, headers=pay))
        refund = {"Idempotency-Key": refund_key}
        show("refund, the bank is down:", await client.post("/refunds/", json={"amount": 5}, headers=refund))
        show("refund retried with the same key:", await client.post("/refunds/", json={"amount": 5}, headers=refund))
        show("refund sent once more:", await client.post("/refunds/", json={"amount": 5}, headers=refund))
        show("same refund key, other amount:", await client.post("/refunds/", json={"amount": 6}, headers=refund))


if __name__ == "__main__":
    asyncio.run(main())
