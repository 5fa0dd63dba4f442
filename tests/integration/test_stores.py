"""The atomic operations of each store, against real Redis and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis
from celery import Celery
from sqlalchemy import text, update
from sqlalchemy.engine import Engine

from celery_reliable.checks import check_redis
from celery_reliable.deferred.pump import Pump
from celery_reliable.heartbeat import Lease, heartbeat
from celery_reliable.idempotency import db_store
from celery_reliable.idempotency.records import COMPLETED, Record
from celery_reliable.runtime import Runtime
from celery_reliable.schema import idempotency
from tests.conftest import DATABASE_URL, REDIS, TEST_DBS
from tests.harness import RedisServer


@pytest.fixture()
def rt(clean: None) -> Runtime:
    app = Celery("stores", broker=f"{REDIS}/{TEST_DBS['broker']}", set_as_current=False)
    app.conf.reliable_redis_url = f"{REDIS}/{TEST_DBS['reliable']}"
    app.conf.reliable_database_url = DATABASE_URL
    return Runtime(app)


def test_claim_busy_renew_release_complete(rt: Runtime) -> None:
    idem = rt.idempotency()
    assert idem.claim("k", "a", 5000, check_epoch=True).status == "claimed"
    busy = idem.claim("k", "b", 5000, check_epoch=True)
    assert busy.status == "busy" and 4000 < busy.busy_ms <= 5000
    _, claim_key, _ = idem.keys("k")
    assert idem.renew(claim_key, "a", 9000) and not idem.renew(claim_key, "b", 9000)
    assert not idem.release("k", "b")  # only the owner releases
    rec = Record("fp", "task-1", COMPLETED, '{"ok":1}')
    assert idem.complete("k", "a", rec, 60_000)
    done = idem.claim("k", "c", 5000, check_epoch=True)
    assert done.status == "done" and done.record == rec and done.record.result == {"ok": 1}


def test_claim_reports_a_cold_redis_until_marked_warm(rt: Runtime) -> None:
    idem = rt.idempotency()
    assert idem.claim("k1", "a", 5000, check_epoch=True).warm is False
    idem.mark_warm()
    assert idem.claim("k2", "a", 5000, check_epoch=True).warm is True


def test_publish_once_returns_the_first_task_id(rt: Runtime) -> None:
    idem = rt.idempotency()
    assert idem.publish_once("k", "t1", 60_000) is None
    assert idem.publish_once("k", "t2", 60_000) == "t1"
    assert idem.publish_once("k", "t1", 60_000) == "t1"
    idem.forget_publish("k", "t2")  # not ours: kept
    assert idem.publish_once("k", "t3", 60_000) == "t1"
    idem.forget_publish("k", "t1")
    assert idem.publish_once("k", "t3", 60_000) is None


def test_deferred_set_take_ack_sweep(rt: Runtime) -> None:
    d = rt.deferred()
    now_entry, later_entry = d.entry({"task": "x"}, "t"), d.entry({"task": "y"}, "t")
    d.park(now_entry, 0)
    d.park(later_entry, 60_000)
    taken = d.take(10, lease_ms=1)
    assert [t.decode() for t in taken] == [now_entry]
    assert d.sizes() == {"due": 1, "inflight": 1, "broken": 0}
    time.sleep(0.01)
    assert d.sweep() == 1  # its pump "died": the lease ran out, the entry is due again
    again = d.take(10, lease_ms=60_000)
    assert [t.decode() for t in again] == [now_entry]
    d.ack(again)
    assert d.sizes() == {"due": 1, "inflight": 0, "broken": 0}


def test_pump_buries_entries_it_cannot_send_and_keeps_going(rt: Runtime) -> None:
    d = rt.deferred()
    d.client.zadd(d.due_key, {b"not json at all": 0, b'{"id": "1", "sig": "nope"}': 0})
    pump = Pump(rt.app, d, interval=0, batch=10, lease_ms=60_000)
    assert pump.step() == 0
    assert d.sizes() == {"due": 0, "inflight": 0, "broken": 2}


def test_heartbeat_renews_and_reports_a_lost_lease() -> None:
    calls: list[int] = []
    ok = threading.Event()
    ok.set()

    def renew() -> bool:
        calls.append(1)
        return ok.is_set()

    lease = heartbeat().add(Lease("t", 300, renew))
    time.sleep(0.35)
    assert len(calls) >= 2 and not lease.lost.is_set()
    ok.clear()
    assert lease.lost.wait(1.0)
    heartbeat().remove(lease)


def test_database_records_conflict_and_expire(rt: Runtime, engine: Engine) -> None:
    eng = rt.engine()
    with eng.begin() as conn:
        assert db_store.insert_committed(conn, "k", "t", "fp", "id1", 60_000)
        assert not db_store.insert_committed(conn, "k", "t", "fp", "id2", 60_000)
        assert db_store.fetch(conn, "k").task_id == "id1"
    stored = db_store.store_result(eng, "k2", "t", "fp", "id1", '"r1"', 60_000, committed=False)
    earlier = db_store.store_result(eng, "k2", "t", "fp", "id2", '"r2"', 60_000, committed=False)
    assert stored.result == "r1" and earlier.task_id == "id1"
    with eng.begin() as conn:
        conn.execute(update(idempotency).values(expires_at=db_store.utcnow() - timedelta(seconds=1)))
        assert db_store.fetch(conn, "k") is None
        # an expired key can be used again
        assert db_store.insert_committed(conn, "k", "t", "fp", "id3", 60_000)
    assert db_store.delete_expired(eng, batch=1) == 1
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reliable_idempotency")).scalar() == 1


def test_warm_up_copies_live_records_into_redis(rt: Runtime) -> None:
    eng = rt.engine()
    for i in range(25):
        db_store.store_result(eng, f"key-{i}", "t", "fp", f"id{i}", str(i), 60_000, committed=False)
    assert rt.warm_up(batch=10) == 25
    idem = rt.idempotency()
    assert idem.is_warm()
    assert idem.claim("key-7", "x", 1000, check_epoch=True).record.result == 7
    assert rt.warm_up() == 0  # already warm


def test_start_up_check_warns_about_an_evicting_redis(tmp_path) -> None:
    server = RedisServer(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        assert check_redis(client) == []
        client.config_set("maxmemory", "100mb")
        client.config_set("maxmemory-policy", "allkeys-lru")
        problems = check_redis(client)
        assert len(problems) == 1 and "noeviction" in problems[0] and "allkeys-lru" in problems[0]
    finally:
        server.stop()


def test_sqlite_records_conflict_like_postgres(tmp_path) -> None:
    from sqlalchemy import create_engine

    from celery_reliable import migrate

    eng = create_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    migrate.upgrade(eng)
    with eng.begin() as conn:
        assert db_store.insert_committed(conn, "k", "t", "fp", "id1", 60_000)
        assert not db_store.insert_committed(conn, "k", "t", "fp", "id2", 60_000)
    with eng.connect() as conn:
        assert db_store.fetch(conn, "k").task_id == "id1"


def test_claim_survives_redis_forgetting_its_scripts(rt: Runtime) -> None:
    idem = rt.idempotency()
    idem.client.script_flush()  # as after a Redis restart
    assert idem.claim("k", "a", 5000, check_epoch=True).status == "claimed"
    assert idem.claim("k", "b", 5000, check_epoch=True).status == "busy"
