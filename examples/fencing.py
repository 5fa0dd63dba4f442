"""Fencing tokens: why a lock alone does not protect a write, and how the resource does.

From the repository root::

    python -m examples.fencing

Needs a Redis on localhost (``FENCING_REDIS_URL``, default ``redis://127.0.0.1:6379/0``;
its keys are unique to the run and deleted at the end). The database is a temporary
SQLite file unless ``FENCING_DATABASE_URL`` names another (for example
``postgresql+psycopg://root@127.0.0.1/test``, which also shows PostgresAdvisoryLock).

Client A takes the lock, then stalls (a GC pause, swapping, SIGSTOP) longer than its
lease; client B takes the lock over and writes; A wakes up, still believing it holds the
lock, and writes. A plain UPDATE lets A's stale write win; the fenced write refuses it.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid

import redis
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, create_engine, insert, select, text, update
from sqlalchemy.engine import Engine

from celery_reliable.errors import StaleFencingToken
from celery_reliable.locks.advisory import PostgresAdvisoryLock
from celery_reliable.locks.fencing import fenced_set, fenced_update
from celery_reliable.locks.names import redis_key
from celery_reliable.locks.redis_lock import RedisLock

RUN = uuid.uuid4().hex[:8]
metadata = MetaData()
# The protected resource: a row with a fence_token column (NULL until the first fenced write).
accounts = Table(
    f"fencing_demo_{RUN}",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("balance", Integer, nullable=False),
    Column("fence_token", BigInteger),
)


def write(engine: Engine, fenced: bool, who: str, token: int, balance: int) -> None:
    """One client's write of the balance, with or without the fence."""
    with engine.begin() as conn:
        try:
            if fenced:
                fenced_update(conn, accounts, {"id": 1}, {"balance": balance}, token, resource="account 1")
            else:
                conn.execute(update(accounts).where(accounts.c.id == 1).values(balance=balance, fence_token=token))
            print(f"  {who} (token {token}) writes balance={balance}: accepted")
        except StaleFencingToken as exc:
            print(f"  {who} (token {token}) writes balance={balance}: REFUSED, {exc}")


def redis_round(client: redis.Redis, engine: Engine, fenced: bool) -> None:
    name = f"fencing-demo:{RUN}:{'fenced' if fenced else 'plain'}"
    with engine.begin() as conn:
        conn.execute(accounts.delete())
        conn.execute(insert(accounts).values(id=1, balance=0))
    print(f"\n{'with fencing (fenced_update)' if fenced else 'without fencing (a plain UPDATE)'}:")
    # renew=False stands in for the pause: a stalled process's heartbeat thread stalls with it.
    a = RedisLock(client, name, ttl=1, renew=False)
    a.acquire()
    print(f"  A holds the lock, token {a.token}; A stalls for 1.2 s, past its 1 s lease ...")
    time.sleep(1.2)
    b = RedisLock(client, name, ttl=10)
    b.acquire()
    print(f"  the lease ran out; B takes the lock, token {b.token}")
    assert a.token is not None and b.token is not None
    write(engine, fenced, "B", b.token, 200)
    write(engine, fenced, "A", a.token, 100)  # A wakes and carries on, unaware
    with engine.connect() as conn:
        balance = conn.execute(select(accounts.c.balance)).scalar_one()
    verdict = "B, the real holder, wins" if balance == 200 else "A's stale write won"
    print(f"  final balance: {balance} ({verdict})")
    print(f"  A.release() -> {a.release()} (its lease was gone); B.release() -> {b.release()}")
    key = redis_key("reliable", name)
    client.delete(f"{key}:fence", f"{key}:wake")  # the name's token counter and wake-up list


def redis_resource(client: redis.Redis) -> None:
    key = f"fencing-demo:{RUN}:value"
    print("\na value kept in Redis, written with fenced_set:")
    fenced_set(client, key, "from B", 200)
    try:
        fenced_set(client, key, "from A", 100)
    except StaleFencingToken as exc:
        print(f"  A's write refused: {exc}")
    print(f"  stored: {client.hget(key, 'value')!r} with token {client.hget(key, 'token')!r}")
    client.delete(key)


def advisory_round(engine: Engine) -> None:
    seq = f"fencing_demo_seq_{RUN}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SEQUENCE {seq}"))  # normally reliable_fence_seq, from the migrations
        conn.execute(accounts.delete())
        conn.execute(insert(accounts).values(id=1, balance=0))
    print("\nPostgresAdvisoryLock: the lock lives as long as its database session")
    try:
        a = PostgresAdvisoryLock(engine, f"fencing-demo:{RUN}", fence_sequence=seq)
        a.acquire()
        print(f"  A holds the advisory lock, token {a.token}; its session is terminated (pg_terminate_backend)")
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": a.backend_pid})
        b = PostgresAdvisoryLock(engine, f"fencing-demo:{RUN}", fence_sequence=seq)
        b.acquire(timeout=5)
        print(f"  B takes the lock, token {b.token}")
        assert a.token is not None and b.token is not None
        write(engine, True, "B", b.token, 200)
        write(engine, True, "A", a.token, 100)
        print(f"  B.release() -> {b.release()}; A.release() -> {a.release()} (its session was gone)")
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SEQUENCE IF EXISTS {seq}"))


def main() -> None:
    client = redis.Redis.from_url(os.environ.get("FENCING_REDIS_URL", "redis://127.0.0.1:6379/0"))
    tmp = tempfile.TemporaryDirectory()
    engine = create_engine(os.environ.get("FENCING_DATABASE_URL") or f"sqlite:///{tmp.name}/fencing.sqlite")
    metadata.create_all(engine)
    try:
        redis_round(client, engine, fenced=False)
        redis_round(client, engine, fenced=True)
        redis_resource(client)
        if engine.dialect.name == "postgresql":
            advisory_round(engine)
    finally:
        metadata.drop_all(engine)
        engine.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
