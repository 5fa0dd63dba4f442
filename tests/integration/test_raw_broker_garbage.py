"""Raw bytes pushed onto a Redis broker list: dead-lettered by our transport, never lost.

Without ``celery_reliable.redis_transport`` kombu's Redis transport raises on such an
item before Celery sees it, the worker stops with "Unrecoverable error", and the item is
gone. These tests push garbage onto the list a real worker consumes (the ``BRPOP`` path)
and read garbage through ``basic_get`` (the polling path).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, _state
from kombu import Connection

import celery_reliable
from celery_reliable import clients, migrate
from celery_reliable.deadletter import DeadLetter, DeadLetterStore
from celery_reliable.redis_transport import Transport
from tests.conftest import REDIS, TEST_DBS
from tests.harness import RedisServer, wait_until
from tests.worker_app import add

TRANSPORT = "celery_reliable.redis_transport:Transport"
QUEUE = "reliable-tests"
#: Nothing listens on port 9: the dead-letter store is down.
DOWN_DATABASE_URL = "postgresql+psycopg://root@127.0.0.1:9/test?connect_timeout=2"

#: Three kinds of garbage: not UTF-8, not JSON, JSON but not an envelope.
GARBAGE = [
    b"\xff\x00not json",
    b"{not json",
    b'{"body": "e30=", "headers": {"task": "tests.worker_app.add"}}',
]

broker = redis.Redis.from_url(f"{REDIS}/{TEST_DBS['broker']}")


def raw_body(letter: DeadLetter) -> bytes:
    """The body a letter keeps, as the bytes that were pushed."""
    assert letter.raw_body is not None
    if letter.raw_body_encoding == "base64":
        return base64.b64decode(letter.raw_body)
    assert letter.raw_body_encoding == "utf-8"
    return str(letter.raw_body).encode("utf-8")


def test_worker_dead_letters_raw_garbage_and_keeps_serving(workers, engine, ledger) -> None:
    before = add.delay(1, 1)
    for item in GARBAGE:
        broker.lpush(QUEUE, item)
    after = add.delay(2, 2)
    assert broker.llen(QUEUE) == 5  # all in the list before any worker reads it

    w = workers("w1", {"TEST_BROKER_TRANSPORT": TRANSPORT}, concurrency=1)
    assert before.get(timeout=30) == 2 and after.get(timeout=30) == 4
    store = DeadLetterStore(engine)
    wait_until(lambda: store.total() == 3, 30, what="three dead letters")
    assert broker.llen(QUEUE) == 0  # the garbage was consumed, not left behind
    assert add.delay(3, 3).get(timeout=30) == 6  # still serving after it
    assert w.proc.poll() is None

    letters = store.list(limit=10)
    assert sorted(raw_body(x) for x in letters) == sorted(GARBAGE)
    assert {(x.reason, x.queue, x.replayable) for x in letters} == {("undeserializable", QUEUE, False)}
    by_body = {raw_body(x): x for x in letters}
    assert by_body[GARBAGE[0]].raw_body_encoding == "base64"
    assert by_body[GARBAGE[1]].exception_type == "JSONDecodeError"
    assert by_body[GARBAGE[2]].exception_type == "NotAnEnvelope"
    assert by_body[GARBAGE[2]].task_name == "tests.worker_app.add"  # headers kept when there are some
    delivered = [d.decode() for d in ledger.lrange("deliveries", 0, -1)]
    assert sum(d.endswith((before.id, after.id)) for d in delivered) == 2
    log = w.log()
    assert log.count("dead-lettered an unreadable item") == 3  # the fault really fired
    assert "Unrecoverable error" not in log


def test_worker_keeps_garbage_in_the_broker_while_the_store_is_down(workers, engine) -> None:
    env = {"TEST_BROKER_TRANSPORT": TRANSPORT, "TEST_DATABASE_URL": DOWN_DATABASE_URL}
    w = workers("down", env, concurrency=1)
    broker.lpush(QUEUE, GARBAGE[0])
    assert add.delay(2, 5).get(timeout=30) == 7
    wait_until(lambda: broker.llen(f"{QUEUE}.unreadable") == 1, 30, what="the item to be kept")
    assert broker.llen(QUEUE) == 0 and broker.lindex(f"{QUEUE}.unreadable", 0) == GARBAGE[0]
    assert w.proc.poll() is None and "kept it in the broker list" in w.log()
    assert DeadLetterStore(engine).total() == 0
    w.stop()

    # once the store is back, moving the item back onto its queue dead-letters it
    broker.lmove(f"{QUEUE}.unreadable", QUEUE, "RIGHT", "LEFT")
    workers("up", {"TEST_BROKER_TRANSPORT": TRANSPORT}, concurrency=1)
    store = DeadLetterStore(engine)
    wait_until(lambda: store.total() == 1, 30, what="the kept item to be dead-lettered")
    assert raw_body(store.list()[0]) == GARBAGE[0]


# -- the polling path (basic_get), in this process, on a private Redis -------------------


@pytest.fixture()
def sqlite_app(tmp_path: Path, private_redis: RedisServer) -> Iterator[Celery]:
    """The current app, installed, with a dead-letter store in a fresh SQLite file."""
    url = f"sqlite:///{tmp_path / 'letters.db'}"
    migrate.upgrade(clients.engine_for(url))
    polling = Celery("raw-garbage", broker=private_redis.url, set_as_current=False)
    polling.conf.reliable_database_url = url
    celery_reliable.install(polling, beat=False)
    previous = _state.get_current_app()
    polling.set_current()
    yield polling
    previous.set_current()
    clients.engine_for(url).dispose()


def _poll_after_garbage(server: RedisServer) -> tuple[object, redis.Redis]:
    queue = f"poll-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(server.url)
    with Connection(server.url, transport=Transport) as conn:
        q = conn.SimpleQueue(queue)
        for item in GARBAGE:
            client.lpush(queue, item)
        q.put({"n": 1})
        message = q.get_nowait()  # reads past the garbage to the message
        payload = message.payload
        message.ack()
        assert client.llen(queue) == 0
        q.close()
    return payload, client


def test_basic_get_dead_letters_garbage_and_returns_the_next_message(private_redis: RedisServer, sqlite_app) -> None:
    payload, _ = _poll_after_garbage(private_redis)
    assert payload == {"n": 1}
    store = DeadLetterStore(clients.engine_for(sqlite_app.conf.reliable_database_url))
    assert sorted(raw_body(x) for x in store.list()) == sorted(GARBAGE)


def test_basic_get_keeps_garbage_when_the_store_is_down(private_redis: RedisServer, sqlite_app) -> None:
    sqlite_app.conf.reliable_database_url = DOWN_DATABASE_URL
    payload, client = _poll_after_garbage(private_redis)
    assert payload == {"n": 1}
    [kept] = [k for k in client.keys("*.unreadable")]
    assert sorted(client.lrange(kept, 0, -1)) == sorted(GARBAGE)
