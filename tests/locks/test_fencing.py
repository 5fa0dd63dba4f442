"""Fenced writes: stale tokens are refused by the resource, shown with a real paused process.

The Kleppmann scenario: a child process holds a RedisLock (ttl 1 s, renewed), is
SIGSTOPped past its lease, the test takes the lock over and writes, then the child
resumes and writes with its old token. Fenced, its write is refused; with a plain
UPDATE (the vacuity check) it lands on top of the newer one. Redis database 15 only.

Run as ``python -m tests.locks.test_fencing MODE NAME DIR`` this module is that child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, create_engine, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable.errors import ConfigurationError, StaleFencingToken
from celery_reliable.locks.advisory import PostgresAdvisoryLock
from celery_reliable.locks.fencing import fenced_set, fenced_update, fenced_upsert
from celery_reliable.locks.names import redis_key
from celery_reliable.locks.redis_lock import RedisLock
from tests.harness import ROOT, wait_until

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
REDIS_URL = "redis://127.0.0.1:6379/15"

metadata = MetaData()
accounts = Table(
    "fencetest_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("balance", Integer, nullable=False),
    Column("writer", Text),
    Column("fence_token", BigInteger),
)
#: Every accepted write, appended (never deduplicated): what really happened.
ledger = Table(
    "fencetest_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("writer", Text, nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("balance", Integer, nullable=False),
)


def write(engine: Engine, mode: str, writer: str, token: int, balance: int) -> dict[str, Any]:
    """One holder's write: the account row and, when accepted, a ledger entry, in one transaction."""
    with engine.begin() as conn:
        values = {"balance": balance, "writer": writer}
        if mode == "fenced":
            try:
                fenced_update(conn, accounts, {"id": 1}, values, token, resource="account 1")
            except StaleFencingToken as exc:
                return {"accepted": False, "current": exc.current}
        else:  # the vacuity check: the same write without the fence
            conn.execute(update(accounts).where(accounts.c.id == 1).values(**values, fence_token=token))
        conn.execute(insert(ledger).values(writer=writer, token=token, balance=balance))
    return {"accepted": True}


def _publish(path: Path, content: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content)
    tmp.rename(path)


def child(mode: str, name: str, workdir: str) -> None:
    """The first holder: acquire, check the lock, then (paused here by the test) write."""
    wd = Path(workdir)
    lock = RedisLock(redis.Redis.from_url(REDIS_URL), name, ttl=1, renew=True)
    assert lock.acquire(blocking=False)
    lock.check()  # the lock is ours ... and then the process stalls before its write
    _publish(wd / "token", str(lock.token))
    while not (wd / "go").exists():
        time.sleep(0.01)
    assert lock.token is not None
    outcome = write(create_engine(DATABASE_URL), mode, "old", lock.token, 100)
    _publish(wd / "outcome", json.dumps({**outcome, "released": lock.release()}))


@pytest.fixture(scope="module")
def pg() -> Iterator[Engine]:
    eng = create_engine(DATABASE_URL)
    metadata.drop_all(eng)
    metadata.create_all(eng)
    yield eng
    metadata.drop_all(eng)
    eng.dispose()


@pytest.fixture()
def db(pg: Engine) -> Engine:
    with pg.begin() as conn:
        conn.execute(text("TRUNCATE fencetest_accounts, fencetest_ledger"))
        conn.execute(insert(accounts).values(id=1, balance=0, writer="seed", fence_token=None))
    return pg


@pytest.fixture()
def r15() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _account(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(accounts.c.writer, accounts.c.balance, accounts.c.fence_token)).one())


def _ledger(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(ledger.c.writer, ledger.c.token).order_by(ledger.c.id))]


# -- the paused holder, with real processes --------------------------------------------


@pytest.mark.parametrize("mode", ["fenced", "plain"])
def test_a_paused_holder_resuming_after_a_takeover(db: Engine, r15: redis.Redis, tmp_path: Path, mode: str) -> None:
    name = f"fencetest:{uuid.uuid4().hex}"
    key = redis_key("reliable", name)
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "tests.locks.test_fencing", mode, name, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "token").exists() or proc.poll() is not None, 30, what="the child's lock")
        assert proc.poll() is None, (tmp_path / "child.log").read_text()
        old_token = int((tmp_path / "token").read_text())
        time.sleep(1.5)
        assert r15.exists(key), "a running holder's heartbeat keeps its 1 s lease past the ttl"

        os.kill(proc.pid, signal.SIGSTOP)  # a GC pause: every thread stops, the heartbeat too
        wait_until(lambda: _state(proc.pid) == "T", 5, interval=0.01, what="the child to stop")
        wait_until(lambda: not r15.exists(key), 5, interval=0.02, what="the paused holder's lease to expire")
        assert _state(proc.pid) == "T"

        new = RedisLock(r15, name, ttl=10, renew=False)
        assert new.acquire(blocking=False)
        assert new.token is not None and new.token > old_token
        assert write(db, mode, "new", new.token, 200) == {"accepted": True}

        (tmp_path / "go").touch()
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: (tmp_path / "outcome").exists() or proc.poll() is not None, 30, what="the old write")
        assert proc.wait(10) == 0, (tmp_path / "child.log").read_text()
        outcome = json.loads((tmp_path / "outcome").read_text())
        assert outcome["released"] is False  # the old holder's lease was gone
        if mode == "fenced":
            assert outcome == {"accepted": False, "current": new.token, "released": False}
            assert _ledger(db) == [("new", new.token)]  # 0 stale writes accepted after the takeover
            assert _account(db) == ("new", 200, new.token)
        else:  # without the fence the stale write lands and overwrites the newer one
            assert outcome["accepted"] is True
            assert _ledger(db) == [("new", new.token), ("old", old_token)]
            assert _account(db) == ("old", 100, old_token)
        assert new.release()
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        proc.wait(10)
        log.close()


def test_an_advisory_lock_lost_with_its_session_is_fenced_out(db: Engine) -> None:
    with db.begin() as conn:
        conn.execute(text("CREATE SEQUENCE IF NOT EXISTS fencetest_seq"))
    try:
        name = f"fencetest:{uuid.uuid4().hex}"
        old = PostgresAdvisoryLock(db, name, fence_sequence="fencetest_seq", check_interval=None)
        assert old.acquire() and old.token is not None and old.backend_pid is not None
        with db.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": old.backend_pid}).scalar()
        new = PostgresAdvisoryLock(db, name, fence_sequence="fencetest_seq")
        assert new.acquire(timeout=5) and new.token is not None and new.token > old.token
        assert write(db, "fenced", "new", new.token, 200) == {"accepted": True}
        assert write(db, "fenced", "old", old.token, 100) == {"accepted": False, "current": new.token}
        assert _ledger(db) == [("new", new.token)]
        assert new.release() and old.release() is False
    finally:
        with db.begin() as conn:
            conn.execute(text("DROP SEQUENCE IF EXISTS fencetest_seq"))


# -- fenced_update / fenced_upsert ------------------------------------------------------


def test_fenced_update_accepts_equal_and_newer_tokens_and_refuses_older(db: Engine) -> None:
    with db.begin() as conn:
        assert fenced_update(conn, accounts, {"id": 1}, {"balance": 1}, 5) == 1  # NULL: never fenced
        assert fenced_update(conn, accounts, {"id": 1}, {"balance": 2}, 5) == 1  # equal: the same holder
        assert fenced_update(conn, accounts, accounts.c.id == 1, {"balance": 3}, 7) == 1
        with pytest.raises(StaleFencingToken) as err:
            fenced_update(conn, accounts, {"id": 1}, {"balance": 4}, 6)
        assert (err.value.resource, err.value.token, err.value.current) == ("fencetest_accounts row", 6, 7)
        assert fenced_update(conn, accounts, {"id": 2}, {"balance": 5}, 1) == 0  # no such row
    assert _account(db) == ("seed", 3, 7)


def test_fenced_update_through_an_orm_session(db: Engine) -> None:
    with Session(db) as session, session.begin():
        assert fenced_update(session, accounts, {"id": 1}, {"writer": "orm"}, 3, resource="acct 1") == 1
        with pytest.raises(StaleFencingToken, match="acct 1"):
            fenced_update(session, accounts, {"id": 1}, {"writer": "late"}, 2, resource="acct 1")
    assert _account(db) == ("orm", 0, 3)


def test_an_older_write_blocked_behind_a_newer_one_is_refused_when_it_commits(db: Engine) -> None:
    with db.connect() as newer:
        newer.begin()
        fenced_update(newer, accounts, {"id": 1}, {"writer": "newer"}, 10)  # row locked, not committed
        result: list[Any] = []

        def older() -> None:
            with db.begin() as conn:
                try:
                    result.append(fenced_update(conn, accounts, {"id": 1}, {"writer": "older"}, 9))
                except StaleFencingToken as exc:
                    result.append(exc)

        thread = threading.Thread(target=older)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and not result  # waiting for the row lock
        newer.commit()
        thread.join(5)
    assert isinstance(result[0], StaleFencingToken) and result[0].current == 10
    assert _account(db) == ("newer", 0, 10)


@pytest.mark.parametrize("url", [DATABASE_URL, "sqlite://"])
def test_fenced_upsert_inserts_updates_and_refuses(db: Engine, url: str) -> None:
    eng = db if url == DATABASE_URL else create_engine(url)
    metadata.create_all(eng)
    with eng.begin() as conn:
        fenced_upsert(conn, accounts, {"id": 9}, {"balance": 1, "writer": "a"}, 4)  # inserted
        fenced_upsert(conn, accounts, {"id": 9}, {"balance": 2, "writer": "b"}, 4)
        fenced_upsert(conn, accounts, {"id": 9}, {"balance": 3, "writer": "c"}, 8)
        with pytest.raises(StaleFencingToken) as err:
            fenced_upsert(conn, accounts, {"id": 9}, {"balance": 4, "writer": "d"}, 7)
        assert err.value.current == 8
        # fenced_update works on SQLite too
        assert fenced_update(conn, accounts, {"id": 9}, {"balance": 5}, 8) == 1
        row = conn.execute(
            select(accounts.c.writer, accounts.c.balance, accounts.c.fence_token).where(accounts.c.id == 9)
        ).one()
    assert tuple(row) == ("c", 5, 8)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"token": -1}, "token"),
        ({"token": True}, "token"),
        ({"token": "5"}, "token"),
        ({"values": {"fence_token": 3}}, "values"),
        ({"values": {"nope": 3}}, "values"),
        ({"where": {"nope": 1}}, "where"),
        ({"where": {}}, "where"),
        ({"column": "nope"}, "column"),
        ({"table": "fencetest_accounts"}, "table"),
    ],
)
def test_fenced_update_bad_input(db: Engine, kwargs: dict[str, Any], option: str) -> None:
    args: dict[str, Any] = {"table": accounts, "where": {"id": 1}, "values": {"balance": 1}, "token": 1, **kwargs}
    with db.begin() as conn, pytest.raises(ConfigurationError) as err:
        fenced_update(conn, **args)
    assert err.value.name == option


# -- fenced_set (Redis) -----------------------------------------------------------------


def test_fenced_set_refuses_an_older_token(r15: redis.Redis) -> None:
    fenced_set(r15, "fencetest:v", "one", 5)
    fenced_set(r15, "fencetest:v", "two", 5)  # equal token: accepted
    fenced_set(r15, "fencetest:v", "three", 9)
    with pytest.raises(StaleFencingToken) as err:
        fenced_set(r15, "fencetest:v", "late", 8)
    assert (err.value.resource, err.value.token, err.value.current) == ("fencetest:v", 8, 9)
    assert r15.hmget("fencetest:v", "value", "token") == [b"three", b"9"]


def test_fenced_set_compares_big_tokens_exactly(r15: redis.Redis) -> None:
    big = 2**60  # 2**60 and 2**60 + 1 are the same double: a float comparison would accept the stale one
    fenced_set(r15, "fencetest:big", "new", big + 1)
    with pytest.raises(StaleFencingToken, match="fencetest big"):
        fenced_set(r15, "fencetest:big", "old", big, resource="fencetest big")
    fenced_set(r15, "fencetest:big", "newer", big * 10)  # longer is larger
    assert r15.hget("fencetest:big", "value") == b"newer"
    with pytest.raises(ConfigurationError):
        fenced_set(r15, "fencetest:big", "x", -1)


if __name__ == "__main__":
    child(*sys.argv[1:4])
