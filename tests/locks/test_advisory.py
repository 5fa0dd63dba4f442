"""PostgresAdvisoryLock against the real PostgreSQL: try, wait, scopes, ids, and a terminated session.

Tokens come from a private sequence (``advtest_fence_seq``) created and dropped here, so
these tests do not depend on the migration that creates ``reliable_fence_seq``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError

from celery_reliable.errors import ConfigurationError, LockError, LockLost, LockNotAcquired
from celery_reliable.locks.advisory import FENCE_SEQUENCE, PostgresAdvisoryLock
from celery_reliable.locks.names import advisory_id
from tests.harness import wait_until

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1/test")
SEQ = "advtest_fence_seq"


@pytest.fixture(scope="module")
def pg() -> Iterator[Engine]:
    eng = create_engine(DATABASE_URL)
    with eng.begin() as conn:
        conn.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {SEQ}"))
    yield eng
    with eng.begin() as conn:
        conn.execute(text(f"DROP SEQUENCE IF EXISTS {SEQ}"))
    eng.dispose()


@pytest.fixture()
def lock(pg: Engine) -> Any:
    """``lock(name, ...)``: a PostgresAdvisoryLock on the test engine with the private sequence."""
    return partial(PostgresAdvisoryLock, pg, fence_sequence=SEQ)


@pytest.fixture()
def name() -> str:
    return f"advtest:{uuid.uuid4().hex}"


def _query(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


# -- ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock_name", "expected"),
    [
        ("payment:order-123", 929066786645069215),
        ("zahlung:bestellung-ü", 7863808347130143195),
        ("支付:订单-123", 1033238871934568396),
        ("🔒 lock", -5947565950102618643),
    ],
)
def test_advisory_id_is_the_documented_stable_hash(lock_name: str, expected: int) -> None:
    digest = hashlib.sha256(lock_name.encode("utf-8")).digest()
    assert int.from_bytes(digest[:8], "big", signed=True) == expected  # the documented formula
    assert advisory_id(lock_name) == expected  # hard-coded: stable across processes and versions


def test_the_key_held_in_pg_locks_is_the_id(pg: Engine, lock: Any) -> None:
    held = lock("🔒 lock")  # a negative id: classid and objid are its two unsigned halves
    assert held.acquire(blocking=False)
    try:
        sql = (
            "SELECT (classid::bigint << 32 | objid::bigint) FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid = :pid AND objsubid = 1 AND granted"
        )
        assert _query(pg, sql, pid=held.backend_pid) == held.key == -5947565950102618643
    finally:
        assert held.release()


# -- session scope ----------------------------------------------------------------------


def test_try_excludes_another_session_and_tokens_increase(lock: Any, name: str) -> None:
    a, b = lock(name), lock(name)
    assert a.acquire(blocking=False) and a.held() and a.locked()
    first = a.token
    assert not b.acquire(blocking=False) and not b.held()
    with pytest.raises(LockError):
        a.acquire(blocking=False)  # not reentrant
    assert a.release() and a.token is None and not a.locked()
    with pytest.raises(LockError):
        a.release()
    assert b.acquire(blocking=False)
    assert b.token > first
    assert "token=" in repr(b)
    assert b.release()


def test_timeout_waits_then_gives_up_and_restores_lock_timeout(pg: Engine, lock: Any, name: str) -> None:
    holder = lock(name)
    assert holder.acquire()
    try:
        with pg.connect() as conn:
            conn.execute(text("SET lock_timeout = '7s'"))
            conn.commit()
            t0 = time.monotonic()
            assert not PostgresAdvisoryLock(conn, name, fence_sequence=SEQ).acquire(timeout=0.3)
            assert 0.29 <= time.monotonic() - t0 < 2.0
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
            conn.rollback()
            with conn.begin():  # inside the caller's transaction: the timeout must not abort it
                conn.execute(text("SELECT 1"))
                assert not PostgresAdvisoryLock(conn, name, fence_sequence=SEQ).acquire(timeout=0.2)
                assert conn.execute(text("SELECT 41 + 1")).scalar() == 42
                assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
    finally:
        holder.release()


@pytest.mark.parametrize("timeout", [10.0, None])
def test_a_blocked_acquire_wakes_when_the_holder_releases(lock: Any, name: str, timeout: float | None) -> None:
    holder, waiter = lock(name), lock(name)
    assert holder.acquire()
    got: list[float] = []
    thread = threading.Thread(target=lambda: waiter.acquire(timeout=timeout) and got.append(time.monotonic()))
    thread.start()
    time.sleep(0.3)
    assert not got
    released_at = time.monotonic()
    assert holder.release()
    thread.join(5)
    assert got and got[0] - released_at < 1.0  # woken by the release (the server wakes the waiter)
    assert waiter.token > 0
    waiter.release()


def test_mutual_exclusion_across_two_engines(pg: Engine, name: str) -> None:
    engines = [create_engine(DATABASE_URL), create_engine(DATABASE_URL)]
    inside, overlaps, tokens = [0], [0], []

    def work(eng: Engine) -> None:
        for _ in range(25):
            with PostgresAdvisoryLock(eng, name, fence_sequence=SEQ, timeout=10) as held:
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                tokens.append(held.token)
                time.sleep(0.002)
                inside[0] -= 1

    threads = [threading.Thread(target=work, args=(eng,)) for eng in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for eng in engines:
        eng.dispose()
    assert overlaps[0] == 0 and len(tokens) == 50
    assert tokens == sorted(set(tokens))  # tokens strictly increase in the order holders got the lock


def test_with_raises_lock_not_acquired_when_busy(lock: Any, name: str) -> None:
    with lock(name):
        with pytest.raises(LockNotAcquired), lock(name, blocking=False):
            pass
        with pytest.raises(LockNotAcquired), lock(name, timeout=0.1):
            pass


def test_a_caller_connection_is_left_as_found(pg: Engine, name: str) -> None:
    with pg.connect() as conn:
        held = PostgresAdvisoryLock(conn, name, fence_sequence=SEQ)
        assert held.acquire() and not conn.in_transaction()
        held.check()  # asks the server through the caller's connection
        assert not conn.in_transaction()
        assert not PostgresAdvisoryLock(pg, name, fence_sequence=SEQ).acquire(blocking=False)
        assert held.release() and not conn.in_transaction()


def test_no_fencing_token_without_a_sequence(pg: Engine, name: str) -> None:
    with PostgresAdvisoryLock(pg, name, fence_sequence=None) as held:
        assert held.token is None and held.backend_pid


def test_a_missing_sequence_is_a_configuration_error_and_leaves_the_lock_free(pg: Engine, name: str) -> None:
    for kwargs in ({"blocking": False}, {"timeout": 1.0}):
        with pytest.raises(ConfigurationError, match=r"advtest_missing_seq.*migrate"):
            PostgresAdvisoryLock(pg, name, fence_sequence="advtest_missing_seq").acquire(**kwargs)
        assert not PostgresAdvisoryLock(pg, name).locked()
    with pg.connect() as conn, conn.begin():
        for kwargs in ({"blocking": False}, {"timeout": 1.0}):
            with pytest.raises(ConfigurationError):
                PostgresAdvisoryLock(conn, name, fence_sequence="advtest_missing_seq").acquire(**kwargs)
            assert conn.execute(text("SELECT 1")).scalar() == 1  # the caller's transaction survived
            assert not PostgresAdvisoryLock(pg, name).locked()


def test_release_in_an_aborted_transaction_can_be_retried_after_the_rollback(pg: Engine, name: str) -> None:
    with pg.connect() as conn:
        conn.begin()
        held = PostgresAdvisoryLock(conn, name, fence_sequence=SEQ)
        with pytest.raises(DataError, match="division by zero"), held:  # not masked by the failed release
            conn.execute(text("SELECT 1 / 0")).scalar()
        assert held.held()  # the unlock could not run in the aborted transaction
        conn.rollback()
        assert held.locked() and held.release() and not held.locked()


def test_the_migrated_sequence_gives_tokens_of_the_same_kind_as_redis_locks(engine: Engine, name: str) -> None:
    import redis

    from celery_reliable.locks import RedisLock

    assert _query(engine, "SELECT to_regclass(:seq)", seq=FENCE_SEQUENCE) is not None  # created by migration 0003
    client = redis.Redis(db=15)
    try:
        with RedisLock(client, name) as on_redis:
            redis_token = on_redis.token
        with PostgresAdvisoryLock(engine, name) as held:
            first = held.token
        with PostgresAdvisoryLock(engine, name) as held:
            second = held.token
    finally:
        for key in client.scan_iter("reliable:lock:*"):
            client.delete(key)
        client.close()
    # server microseconds on both sides: a resource fenced under one backend accepts the other's next token
    assert redis_token is not None and first is not None and second is not None
    assert first < second
    assert abs(first - redis_token) < 2_000_000  # same clock unit and epoch: the sequence trails the clock by < 1 s


# -- transaction scope ------------------------------------------------------------------


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_transaction_scope_is_released_by_the_end_of_the_transaction(
    lock: Any, pg: Engine, name: str, end: str
) -> None:
    with pg.connect() as conn:
        conn.begin()
        held = PostgresAdvisoryLock(conn, name, "transaction", fence_sequence=SEQ)
        assert held.acquire(timeout=1) and held.token
        assert held.release()  # a no-op: the transaction still holds it
        assert not lock(name).acquire(blocking=False)
        assert held.acquire(blocking=False)  # the same transaction may take it again
        getattr(conn, end)()
        assert not held.held()  # the end of the transaction released it
        other = lock(name)
        assert other.acquire(blocking=False)
        conn.begin()
        assert not held.acquire(timeout=0.2)
        assert conn.execute(text("SELECT 1")).scalar() == 1
        conn.rollback()
        other.release()


def test_transaction_scope_needs_a_connection_in_a_transaction(pg: Engine, name: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        PostgresAdvisoryLock(pg, name, "transaction")
    assert err.value.name == "scope"
    with pg.connect() as conn:
        with pytest.raises(ConfigurationError, match="inside a transaction"):
            PostgresAdvisoryLock(conn, name, "transaction").acquire()
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        auto.begin()
        with pytest.raises(ConfigurationError, match="inside a transaction"):
            PostgresAdvisoryLock(auto, name, "transaction").acquire()


# -- loss -------------------------------------------------------------------------------


def _terminate(pg: Engine, pid: int) -> None:
    assert _query(pg, "SELECT pg_terminate_backend(:pid)", pid=pid) is True
    wait_until(
        lambda: not _query(pg, "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=pid),
        5,
        what=f"backend {pid} to exit",
    )


def test_a_terminated_session_frees_the_lock_and_the_holder_finds_out(pg: Engine, lock: Any, name: str) -> None:
    held = lock(name, check_interval=0.2)
    assert held.acquire()
    held.check()
    _terminate(pg, held.backend_pid)
    other = lock(name)
    assert other.acquire(blocking=False)  # the server freed it with the session
    wait_until(held.lost.is_set, 3, interval=0.02, what="the heartbeat to notice the loss")
    assert not held.held()
    with pytest.raises(LockLost):
        held.check()
    assert held.release() is False
    assert other.release()


def test_with_raises_lock_lost_when_the_session_died_in_the_block(pg: Engine, lock: Any, name: str) -> None:
    with pytest.raises(LockLost), lock(name, check_interval=None) as held:
        _terminate(pg, held.backend_pid)
    assert not held.locked()


def test_check_on_a_caller_connection_asks_the_server(pg: Engine, name: str) -> None:
    with pg.connect() as conn:
        held = PostgresAdvisoryLock(conn, name, fence_sequence=SEQ)
        assert held.acquire()
        _terminate(pg, held.backend_pid)
        with pytest.raises(LockLost):
            held.check()
        assert held.lost.is_set() and held.release() is False


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"name": ""}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"scope": "global"}, "scope"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"check_interval": 0}, "check_interval"),
        ({"fence_sequence": ""}, "fence_sequence"),
    ],
)
def test_bad_input_names_the_parameter(pg: Engine, kwargs: dict[str, Any], option: str) -> None:
    args = {"name": "advtest:bad", **kwargs}
    with pytest.raises(ConfigurationError) as err:
        PostgresAdvisoryLock(pg, **args)
    assert err.value.name == option


@pytest.mark.parametrize("bind", ["postgresql://root@127.0.0.1/test", None, "sqlite"])
def test_a_wrong_engine_is_refused(bind: Any) -> None:
    if bind == "sqlite":
        bind = create_engine("sqlite://")
    with pytest.raises(ConfigurationError) as err:
        PostgresAdvisoryLock(bind, "advtest:bad")
    assert err.value.name == "engine_or_connection"
