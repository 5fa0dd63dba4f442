"""Stripe-style HTTP idempotency against PostgreSQL: replay, 422, 409, no caching of 5xx, expiry.

The middleware runs on a Starlette app driven in-process by httpx; ``idempotent_execute``
runs with sync sessions in threads and with async sessions under asyncio.gather.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from celery_reliable.errors import IdempotencyInProgress, IdempotencyKeyError, IdempotencyKeyReused
from celery_reliable.http import IdempotencyMiddleware, delete_expired, idempotent_execute, request_fingerprint, store
from tests.conftest import DATABASE_URL

EFFECTS = "http_test_effects"


@pytest.fixture()
def db(engine: Engine) -> Iterator[Engine]:
    """The migrated test database with an effects table of its own, emptied per test."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {EFFECTS} (id bigserial PRIMARY KEY, key text, amount int)"))
        conn.execute(text(f"TRUNCATE {EFFECTS}"))
        conn.execute(text("DELETE FROM reliable_http_idempotency"))
    yield engine


def key() -> str:
    return f"key-{uuid.uuid4()}"


def effects(engine: Engine, k: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {EFFECTS} WHERE key = :k"), {"k": k}).scalar_one())


def rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM reliable_http_idempotency")).scalar_one())


# --------------------------------------------------------------------------- middleware


class Payments:
    """A Starlette app whose handler counts its runs; the body says how it behaves."""

    def __init__(self) -> None:
        self.runs = 0

    async def pay(self, request: Request) -> Response:
        data = await request.json()
        self.runs += 1
        run = self.runs
        await asyncio.sleep(data.get("hold", 0))
        if run <= data.get("fail_times", 0):
            return JSONResponse({"error": "upstream down"}, status_code=503)
        if data.get("raise"):
            raise RuntimeError("handler crashed")
        if data.get("big"):
            return Response(b"x" * 5000, media_type="application/octet-stream")
        return JSONResponse({"paid": data["amount"], "run": run}, status_code=201, headers={"x-run": str(run)})

    def app(self, engine: Any, **options: Any) -> Starlette:
        return Starlette(
            routes=[Route("/payments", self.pay, methods=["POST"]), Route("/payments", self.pay, methods=["GET"])],
            middleware=[Middleware(IdempotencyMiddleware, engine=engine, **options)],
        )


def client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture(params=["async-engine", "sync-engine"])
def engine_kind(request: pytest.FixtureRequest, db: Engine) -> str:
    return str(request.param)


def run(coro_fn: Any, engine_kind: str, db: Engine) -> Any:
    """Run ``coro_fn(engine)`` on a fresh loop with an AsyncEngine (made on that loop) or the sync Engine."""

    async def main() -> Any:
        if engine_kind == "sync-engine":
            return await coro_fn(db)
        aengine = create_async_engine(DATABASE_URL)
        try:
            return await coro_fn(aengine)
        finally:
            await aengine.dispose()

    return asyncio.run(main())


def test_same_key_same_request_replays_the_stored_response(engine_kind: str, db: Engine) -> None:
    payments, k = Payments(), key()

    async def scenario(engine: Any) -> list[httpx.Response]:
        async with client(payments.app(engine)) as c:
            return [await c.post("/payments", json={"amount": 5}, headers={"Idempotency-Key": k}) for _ in range(3)]

    first, *again = run(scenario, engine_kind, db)
    assert payments.runs == 1
    assert first.status_code == 201 and first.json() == {"paid": 5, "run": 1}
    assert "idempotent-replayed" not in first.headers
    for r in again:
        assert r.status_code == 201 and r.content == first.content
        assert r.headers["x-run"] == "1" and r.headers["content-type"] == "application/json"
        assert r.headers["idempotent-replayed"] == "true"


def test_same_key_different_request_is_422(engine_kind: str, db: Engine) -> None:
    payments, k = Payments(), key()

    async def scenario(engine: Any) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(payments.app(engine)) as c:
            a = await c.post("/payments", json={"amount": 5}, headers={"Idempotency-Key": k})
            b = await c.post("/payments", json={"amount": 6}, headers={"Idempotency-Key": k})
            other = await c.post("/payments", json={"amount": 6}, headers={"Idempotency-Key": key()})
            return a, b, other

    a, b, other = run(scenario, engine_kind, db)
    assert a.status_code == 201
    assert b.status_code == 422 and b.headers["content-type"] == "application/problem+json"
    assert b.json()["status"] == 422 and "different request" in b.json()["detail"]
    assert other.status_code == 201
    assert payments.runs == 2  # the 422 never reached the handler


def test_concurrent_requests_with_one_key_run_once_the_others_get_409(engine_kind: str, db: Engine) -> None:
    payments, k = Payments(), key()

    async def scenario(engine: Any) -> tuple[list[httpx.Response], httpx.Response]:
        async with client(payments.app(engine)) as c:
            send = [
                c.post("/payments", json={"amount": 7, "hold": 0.5}, headers={"Idempotency-Key": k}) for _ in range(12)
            ]
            answers = list(await asyncio.gather(*send))
            after = await c.post("/payments", json={"amount": 7, "hold": 0.5}, headers={"Idempotency-Key": k})
            return answers, after

    answers, after = run(scenario, engine_kind, db)
    statuses = sorted(r.status_code for r in answers)
    assert payments.runs == 1
    assert statuses == [201] + [409] * 11
    busy = next(r for r in answers if r.status_code == 409)
    assert busy.json()["title"] == "Request in progress" and int(busy.headers["retry-after"]) >= 1
    assert after.status_code == 201 and after.headers["idempotent-replayed"] == "true"
    assert after.json() == {"paid": 7, "run": 1}


def test_server_errors_are_not_stored_and_the_retry_runs(engine_kind: str, db: Engine) -> None:
    payments, k = Payments(), key()
    body = {"amount": 3, "fail_times": 2}

    async def scenario(engine: Any) -> list[httpx.Response]:
        async with client(payments.app(engine)) as c:
            return [await c.post("/payments", json=body, headers={"Idempotency-Key": k}) for _ in range(4)]

    answers = run(scenario, engine_kind, db)
    assert [r.status_code for r in answers] == [503, 503, 201, 201]
    assert payments.runs == 3  # two failures ran again; the success ran once and then replayed
    assert "idempotent-replayed" not in answers[1].headers
    assert answers[3].headers["idempotent-replayed"] == "true" and answers[3].json()["run"] == 3


def test_a_crashing_handler_frees_its_key(db: Engine) -> None:
    payments, k = Payments(), key()

    async def scenario(engine: Any) -> list[httpx.Response]:
        async with client(payments.app(engine)) as c:
            crashed = await c.post("/payments", json={"amount": 1, "raise": True}, headers={"Idempotency-Key": k})
            again = await c.post("/payments", json={"amount": 1, "raise": True}, headers={"Idempotency-Key": k})
            return [crashed, again]

    answers = run(scenario, "sync-engine", db)
    assert [r.status_code for r in answers] == [500, 500]
    assert payments.runs == 2 and rows(db) == 0


def test_keys_expire(db: Engine) -> None:
    payments, k = Payments(), key()

    async def scenario(engine: Any) -> list[httpx.Response]:
        async with client(payments.app(engine, ttl=1)) as c:
            first = await c.post("/payments", json={"amount": 2}, headers={"Idempotency-Key": k})
            replayed = await c.post("/payments", json={"amount": 2}, headers={"Idempotency-Key": k})
            await asyncio.sleep(1.2)
            fresh = await c.post("/payments", json={"amount": 9}, headers={"Idempotency-Key": k})
            return [first, replayed, fresh]

    _, replayed, fresh = run(scenario, "sync-engine", db)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert fresh.status_code == 201 and "idempotent-replayed" not in fresh.headers and fresh.json()["run"] == 2
    # the cleanup deletes what expired, and only that
    with db.begin() as conn:
        conn.execute(text("UPDATE reliable_http_idempotency SET expires_at = now() - interval '1 second'"))
    assert delete_expired(db, batch=1) == 1 and rows(db) == 0


def test_a_dead_holder_is_taken_over_after_its_lock_runs_out(db: Engine) -> None:
    payments, k = Payments(), key()
    body = b'{"amount":4}'
    fp = request_fingerprint("POST", "/payments", body, [("content-type", "application/json")])
    with db.begin() as conn:  # a server claimed the key and died
        claim = store.begin(conn, "POST /payments", k, fp, 60_000, 1000)
    assert claim.status == "started"

    async def scenario(engine: Any) -> list[httpx.Response]:
        async with client(payments.app(engine)) as c:
            headers = {"Idempotency-Key": k, "content-type": "application/json"}
            locked = await c.post("/payments", content=body, headers=headers)
            await asyncio.sleep(1.1)
            taken = await c.post("/payments", content=body, headers=headers)
            return [locked, taken]

    locked, taken = run(scenario, "sync-engine", db)
    assert locked.status_code == 409 and taken.status_code == 201 and payments.runs == 1
    with db.begin() as conn:  # the dead holder cannot complete what it no longer holds
        assert not store.complete(conn, "POST /payments", k, claim.owner, store.StoredResponse.of_value(1))


def test_requests_without_a_key_other_methods_bad_keys_and_scopes(db: Engine) -> None:
    payments = Payments()

    def tenant(scope: Any) -> str:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode()

    async def scenario(engine: Any) -> dict[str, httpx.Response]:
        async with client(payments.app(engine, scope=tenant, max_body_bytes=1000)) as c:
            k = key()
            out = {
                "no-key": await c.post("/payments", json={"amount": 1}),
                "bad-key": await c.post("/payments", json={"amount": 1}, headers={"Idempotency-Key": "x" * 300}),
                "tenant-a": await c.post(
                    "/payments", json={"amount": 1}, headers={"Idempotency-Key": k, "x-tenant": "a"}
                ),
                "tenant-b": await c.post(
                    "/payments", json={"amount": 1}, headers={"Idempotency-Key": k, "x-tenant": "b"}
                ),
            }
            big = key()
            out["big-1"] = await c.post("/payments", json={"amount": 1, "big": True}, headers={"Idempotency-Key": big})
            out["big-2"] = await c.post("/payments", json={"amount": 1, "big": True}, headers={"Idempotency-Key": big})
        async with client(payments.app(engine, required=True)) as c:
            out["required"] = await c.post("/payments", json={"amount": 1})
        return out

    out = run(scenario, "sync-engine", db)
    assert out["no-key"].status_code == 201
    assert out["bad-key"].status_code == 400
    assert out["tenant-a"].status_code == out["tenant-b"].status_code == 201  # two clients, two keys
    assert "idempotent-replayed" not in out["tenant-b"].headers
    assert out["big-1"].content == out["big-2"].content == b"x" * 5000  # over max_body_bytes: sent, not stored
    assert "idempotent-replayed" not in out["big-2"].headers
    assert out["required"].status_code == 400
    assert payments.runs == 5


# --------------------------------------------------------------------------- idempotent_execute


def charge(session: Session, k: str, amount: int, hold: float = 0.0) -> dict[str, Any]:
    session.execute(text(f"INSERT INTO {EFFECTS} (key, amount) VALUES (:k, :a)"), {"k": k, "a": amount})
    time.sleep(hold)
    return {"charged": amount, "key": k}


def test_sync_execute_replays_commits_once_and_refuses_another_request(db: Engine) -> None:
    k = key()
    calls = []

    def call(amount: int) -> Any:
        with Session(db) as session:
            return idempotent_execute(
                session,
                k,
                "/payments",
                lambda: calls.append(1) or charge(session, k, amount),
                request_fingerprint={"amount": amount},
            )

    assert call(5) == {"charged": 5, "key": k}
    assert call(5) == {"charged": 5, "key": k}
    with pytest.raises(IdempotencyKeyReused) as info:
        call(6)
    assert info.value.status_code == 422
    assert len(calls) == 1 and effects(db, k) == 1
    with pytest.raises(IdempotencyKeyError):
        call_bad = Session(db)
        idempotent_execute(call_bad, "", "/payments", lambda: None)


def test_sync_execute_failure_rolls_back_and_frees_the_key(db: Engine) -> None:
    k = key()

    def boom(session: Session) -> None:
        charge(session, k, 1)
        raise ConnectionError("payment provider down")

    with Session(db) as session, pytest.raises(ConnectionError):
        idempotent_execute(session, k, "/payments", lambda: boom(session))
    assert effects(db, k) == 0 and rows(db) == 0
    with Session(db) as session:
        failing = idempotent_execute(session, k, "/payments", lambda: Response(b"down", status_code=503))
    assert failing.status_code == 503 and rows(db) == 0  # a 5xx answer is returned, not stored
    with Session(db) as session:
        ok = idempotent_execute(session, k, "/payments", lambda: JSONResponse({"ok": 1}, status_code=201))
    with Session(db) as session:
        again = idempotent_execute(session, k, "/payments", lambda: pytest.fail("must not run"))
    assert ok.status_code == again.status_code == 201 and again.body == ok.body
    assert again.headers["idempotent-replayed"] == "true"


def test_sync_execute_from_threads_runs_once(db: Engine) -> None:
    k = key()
    outcomes: list[str] = []
    bodies: list[int] = []
    start = threading.Barrier(8)

    def work(session: Session) -> dict[str, Any]:
        bodies.append(1)
        return charge(session, k, 9, hold=0.5)

    def worker() -> None:
        with Session(db) as session:
            start.wait()
            try:
                result = idempotent_execute(session, k, "/payments", lambda: work(session))
                outcomes.append("ran" if result == {"charged": 9, "key": k} else "odd")
            except IdempotencyInProgress as exc:
                assert exc.status_code == 409
                outcomes.append("409")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["409"] * 7 + ["ran"]
    assert len(bodies) == 1 and effects(db, k) == 1


def test_a_call_that_outlives_its_lock_loses_to_the_retry_and_rolls_back(db: Engine) -> None:
    """The slow first call's lock runs out; a retry takes the key over and commits. The first
    call's commit then fails, so the effect still happens once."""
    k = key()
    first: list[BaseException] = []

    def slow() -> None:
        with Session(db) as session:
            try:
                idempotent_execute(session, k, "/p", lambda: charge(session, k, 1, hold=2.0), lock_timeout=1)
            except BaseException as exc:
                first.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.3)
    with Session(db) as session:
        assert idempotent_execute(session, k, "/p", lambda: charge(session, k, 1), lock_timeout=1)["charged"] == 1
    t.join(10)
    assert len(first) == 1 and isinstance(first[0], IdempotencyInProgress)
    assert effects(db, k) == 1  # the fault happened (two bodies ran) and only one commit stood


def test_async_execute_the_seed_quick_start(db: Engine) -> None:
    """``return await idempotent_execute(db, idempotency_key, "/payments", process)`` with AsyncSession."""
    k = key()
    runs = []

    async def main() -> tuple[list[Any], Any]:
        aengine = create_async_engine(DATABASE_URL)
        sessions = async_sessionmaker(aengine, expire_on_commit=False)

        async def endpoint(idempotency_key: str) -> Any:
            async with sessions() as db_session:

                async def process() -> dict[str, Any]:
                    runs.append(1)
                    await db_session.execute(
                        text(f"INSERT INTO {EFFECTS} (key, amount) VALUES (:k, 12)"), {"k": idempotency_key}
                    )
                    await asyncio.sleep(0.4)
                    return {"payment": "p-1", "amount": 12}

                return await idempotent_execute(db_session, idempotency_key, "/payments", process)

        try:
            answers = await asyncio.gather(*(endpoint(k) for _ in range(6)), return_exceptions=True)
            later = await endpoint(k)
            return list(answers), later
        finally:
            await aengine.dispose()

    answers, later = asyncio.run(main())
    assert sum(1 for a in answers if a == {"payment": "p-1", "amount": 12}) == 1
    assert sum(1 for a in answers if isinstance(a, IdempotencyInProgress)) == 5
    assert later == {"payment": "p-1", "amount": 12}
    assert len(runs) == 1 and effects(db, k) == 1


def test_async_execute_failure_frees_the_key(db: Engine) -> None:
    k = key()

    async def main() -> Any:
        aengine = create_async_engine(DATABASE_URL)
        try:
            async with AsyncSession(aengine) as s:

                async def boom() -> None:
                    await s.execute(text(f"INSERT INTO {EFFECTS} (key, amount) VALUES (:k, 1)"), {"k": k})
                    raise TimeoutError("upstream")

                with pytest.raises(TimeoutError):
                    await idempotent_execute(s, k, "/payments", boom)
            async with AsyncSession(aengine) as s:
                return await idempotent_execute(s, k, "/payments", lambda: {"second": True})
        finally:
            await aengine.dispose()

    assert asyncio.run(main()) == {"second": True}
    assert effects(db, k) == 0
