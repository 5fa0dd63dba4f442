"""The relay in-process: claiming, ordering keys, failures, several relays, listen mode, cleanup.

Relays publish to Redis db 1 (a fresh queue per test); faults are real where the broker
can produce them (a Redis that refuses writes, a broker nobody listens on) and injected
through the relay's ``publisher`` where a single message must be refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from kombu import Producer
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable.outbox import (
    DEAD,
    PENDING,
    PUBLISHED,
    OutboxListener,
    OutboxMessage,
    cleanup_published,
    discard_dead,
    enqueue,
    outbox,
    outbox_status,
    publish_message,
    relay_outbox,
    requeue_dead,
)
from tests.harness import RedisServer, wait_until
from tests.outbox_support import (
    broker_messages,
    drop_queue,
    make_app,
    new_run,
    outbox_engine,
    queue_for,
    reset_outbox,
    states,
)

TASK = "outbox_tests.consume"


@pytest.fixture()
def db() -> Iterator[Engine]:
    eng = outbox_engine()
    reset_outbox(eng)
    yield eng
    eng.dispose()


@pytest.fixture()
def queue() -> Iterator[str]:
    q = queue_for(new_run())
    yield q
    drop_queue(q)


def _row(db: Engine, message_id: str) -> Any:
    with db.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.message_id == message_id)).one()


def _per_key(queue: str) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for m in broker_messages(queue):
        _, key, seq = m["args"]
        seen.setdefault(key or "-", []).append(seq)
    return seen


def test_rows_committed_in_the_opposite_order_of_their_ids_are_all_published(db: Engine, queue: str) -> None:
    app = make_app()
    conns = [db.connect() for _ in range(6)]
    txs = [c.begin() for c in conns]
    ids = [enqueue(c, TASK, ["r", None, i], queue=queue) for i, c in enumerate(conns)]
    assert [_row_id(conns[i], ids[i]) for i in range(6)] == sorted(_row_id(conns[i], ids[i]) for i in range(6))
    for conn, tx in reversed(list(zip(conns, txs, strict=True))):
        tx.commit()  # highest id first
        conn.close()
        assert relay_outbox(app)["published"] == 1
    assert [m["args"][2] for m in broker_messages(queue)] == [5, 4, 3, 2, 1, 0]
    assert states(db) == {PUBLISHED: 6}


def _row_id(conn: Any, message_id: str) -> int:
    return int(conn.execute(select(outbox.c.id).where(outbox.c.message_id == message_id)).scalar_one())


def test_a_long_open_transaction_below_published_rows_is_not_skipped(db: Engine, queue: str) -> None:
    app = make_app()
    slow = db.connect()
    slow_tx = slow.begin()
    early = enqueue(slow, TASK, ["r", None, -1], queue=queue)  # lowest id, committed last
    with Session(db) as session, session.begin():
        for i in range(50):
            enqueue(session, TASK, ["r", None, i], queue=queue)
    assert relay_outbox(app)["published"] == 50
    slow_tx.commit()
    slow.close()
    assert relay_outbox(app)["published"] == 1
    assert broker_messages(queue)[-1]["id"] == early and states(db) == {PUBLISHED: 51}


def test_writers_of_one_key_commit_in_id_order_and_publish_in_commit_order(db: Engine, queue: str) -> None:
    app = make_app()
    first_wrote = threading.Event()
    waited: list[float] = []

    def first() -> None:
        with Session(db) as session, session.begin():
            enqueue(session, TASK, ["r", "acct", 1], queue=queue, ordering_key="acct")
            first_wrote.set()
            time.sleep(0.5)

    def second() -> None:
        first_wrote.wait(5)
        start = time.monotonic()
        with Session(db) as session, session.begin():
            enqueue(session, TASK, ["r", "acct", 2], queue=queue, ordering_key="acct")
            waited.append(time.monotonic() - start)  # blocked on the key until the first committed

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert waited and waited[0] > 0.3
    relay_outbox(app)
    assert _per_key(queue) == {"acct": [1, 2]}


def test_keys_publish_in_order_one_relay_at_a_time_and_unkeyed_rows_never_wait(db: Engine, queue: str) -> None:
    app = make_app()
    keys = ["a", "b", "c"]
    seq = dict.fromkeys(keys, 0)
    with Session(db) as session:
        for round_ in range(30):
            with session.begin():
                for key in keys[: 1 + round_ % 3]:
                    enqueue(session, TASK, ["r", key, seq[key]], queue=queue, ordering_key=key)
                    seq[key] += 1
                enqueue(session, TASK, ["r", None, round_], queue=queue)
    stats = relay_outbox(app, batch=7)
    assert stats["published"] == sum(seq.values()) + 30
    per_key = _per_key(queue)
    for key in keys:
        assert per_key[key] == list(range(seq[key]))
    assert per_key["-"] == list(range(30))
    # a key's rows follow its head in the same round: far fewer rounds than rows per key
    assert stats["rounds"] <= (sum(seq.values()) + 30) // 7 + 3


class Refusing:
    """A publisher that refuses some message ids (like a broker rejecting one message)."""

    def __init__(self, app: Any, refused: set[str]) -> None:
        self.app = app
        self.refused = refused
        self.tries: list[str] = []

    def __call__(self, producer: Producer, message: OutboxMessage) -> None:
        self.tries.append(message.message_id)
        if message.message_id in self.refused:
            raise redis.exceptions.ResponseError("refused by the broker")
        publish_message(self.app, producer, message)


def test_a_refused_row_backs_off_then_dies_without_blocking_other_rows(db: Engine, queue: str) -> None:
    # a base of 0.5 s: the "not due yet" check below must come before the first backoff
    # (at least 0.25 s) ends, even on a loaded machine
    app = make_app(reliable_outbox_max_attempts=3, reliable_outbox_retry_base=0.5, reliable_outbox_retry_cap=2.0)
    with Session(db) as session, session.begin():
        bad = enqueue(session, TASK, ["r", "k", 0], queue=queue, ordering_key="k")
        after_bad = enqueue(session, TASK, ["r", "k", 1], queue=queue, ordering_key="k")
        free = [enqueue(session, TASK, ["r", None, i], queue=queue) for i in range(3)]
        other = enqueue(session, TASK, ["r", "other", 0], queue=queue, ordering_key="other")
    publisher = Refusing(app, {bad})
    started = [datetime.now(timezone.utc)]
    first = relay_outbox(app, publisher=publisher)
    assert first["published"] == 4 and first["retried"] == 1
    assert {m["id"] for m in broker_messages(queue)} == {*free, other}  # the key's next row waits
    row = _row(db, bad)
    assert row.state == PENDING and row.attempts == 1 and "refused" in row.last_error
    delays = [(row.next_attempt_at - started[-1]).total_seconds()]
    assert relay_outbox(app, publisher=publisher)["published"] == 0  # not due yet
    assert publisher.tries.count(bad) == 1

    def retried() -> bool:
        started.append(datetime.now(timezone.utc))
        stats = relay_outbox(app, publisher=publisher)
        return bool(stats["retried"] or stats["dead"])

    wait_until(retried, 5, interval=0.01, what="the second attempt")
    second = _row(db, bad)
    delays.append((second.next_attempt_at - started[-1]).total_seconds())
    assert second.attempts == 2
    # equal jitter: [0.25, 0.5] s after the first failure, [0.5, 1.0] s after the second
    assert 0.25 <= delays[0] < 0.5 + 0.3 and 0.5 <= delays[1] < 1.0 + 0.3
    wait_until(retried, 5, interval=0.01, what="the third attempt")
    dead = _row(db, bad)
    assert dead.state == DEAD and dead.attempts == 3 and publisher.tries.count(bad) == 3
    assert _row(db, after_bad).state == PENDING  # a dead row keeps its key blocked
    assert outbox_status(db)["dead"] == 1 and outbox_status(db)["pending"] == 1

    publisher.refused.clear()
    assert requeue_dead(db, [bad]) == 1
    assert relay_outbox(app, publisher=publisher)["published"] == 2
    assert [m["id"] for m in broker_messages(queue)][-2:] == [bad, after_bad]
    assert states(db) == {PUBLISHED: 6}


def test_discarding_a_dead_row_lets_its_key_go_on(db: Engine, queue: str) -> None:
    app = make_app(reliable_outbox_max_attempts=1)
    with Session(db) as session, session.begin():
        bad = enqueue(session, TASK, ["r", "k", 0], queue=queue, ordering_key="k")
        nxt = enqueue(session, TASK, ["r", "k", 1], queue=queue, ordering_key="k")
    assert relay_outbox(app, publisher=Refusing(app, {bad}))["dead"] == 1
    assert discard_dead(db, [bad]) == 1
    assert relay_outbox(app)["published"] == 1
    assert [m["id"] for m in broker_messages(queue)] == [nxt]


def test_an_unregistered_task_name_is_retried_then_parked_dead(db: Engine, queue: str) -> None:
    # A backoff of 0.5-1 s (equal jitter on a 1 s base): the retry is not due again within
    # the first run, however slowly its rounds go on a loaded machine.
    app = make_app(reliable_outbox_max_attempts=2, reliable_outbox_retry_base=1.0)
    with Session(db) as session, session.begin():
        unknown = enqueue(session, "nobody.knows.this", [1], queue=queue, app=app)
        known = enqueue(session, TASK, ["r", None, 1], queue=queue)
    assert relay_outbox(app) == {"published": 1, "retried": 1, "dead": 0, "rounds": 2, "broker_unavailable": 0}
    wait_until(lambda: relay_outbox(app)["dead"] == 1, 15, interval=0.2, what="the unknown task to die")
    row = _row(db, unknown)
    assert row.state == DEAD and row.attempts == 2 and "NotRegistered" in row.last_error
    assert [m["id"] for m in broker_messages(queue)] == [known]


def test_a_broker_refusing_writes_delays_rows_and_they_go_when_it_accepts_again(
    db: Engine, queue: str, private_redis: RedisServer
) -> None:
    app = make_app(broker_url=private_redis.url, reliable_outbox_retry_base=0.2, reliable_outbox_retry_cap=0.4)
    server = redis.Redis(port=private_redis.port)
    with Session(db) as session, session.begin():
        ids = [enqueue(session, TASK, ["r", None, i], queue=queue) for i in range(3)]
    server.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
    refused = relay_outbox(app)
    assert refused["published"] == 0 and refused["retried"] == 3 and refused["broker_unavailable"] == 0
    assert all("maxmemory" in _row(db, m).last_error and _row(db, m).attempts == 1 for m in ids)
    server.config_set("maxmemory", 0)
    went: list[int] = []
    wait_until(lambda: went.append(relay_outbox(app)["published"]) or sum(went) == 3, 5, what="the rows to go")
    assert server.llen(queue) == 3
    server.close()


def test_an_unreachable_broker_stops_the_run_and_spends_no_attempt(db: Engine, queue: str) -> None:
    app = make_app(
        broker_url="redis://127.0.0.1:9/0",  # nothing listens there
        task_publish_retry=False,
        broker_transport_options={"max_retries": 0},  # redis-py would retry the connect for 6 s
        reliable_outbox_retry_base=0.5,
    )
    with Session(db) as session, session.begin():
        ids = [enqueue(session, TASK, ["r", None, i], queue=queue) for i in range(5)]
    stats = relay_outbox(app)
    assert stats["broker_unavailable"] == 1 and stats["rounds"] == 1 and stats["published"] == 0
    rows = [_row(db, m) for m in ids]
    assert all(r.state == PENDING and r.attempts == 0 for r in rows)
    assert rows[0].next_attempt_at is not None and "unreachable" in rows[0].last_error  # stepped aside
    assert all(r.next_attempt_at is None for r in rows[1:])  # never tried


def test_several_relays_at_once_publish_every_row_exactly_once(db: Engine, queue: str) -> None:
    app = make_app()
    keys = [f"k{i}" for i in range(10)]
    with Session(db) as session:
        for t in range(60):
            with session.begin():
                for i in range(25):
                    key = keys[(t + i) % 10] if i % 2 else None
                    enqueue(session, TASK, ["r", key, t * 100 + i], queue=queue, ordering_key=key)
    totals: list[dict[str, int]] = []

    def relay() -> None:
        totals.append(relay_outbox(app, batch=50))

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(t["published"] for t in totals) == 1500
    assert sum(1 for t in totals if t["published"]) >= 2  # the relays really shared the work
    messages = broker_messages(queue)
    assert len(messages) == len({m["id"] for m in messages}) == 1500
    for key, seqs in _per_key(queue).items():
        if key != "-":
            assert seqs == sorted(seqs), key


def test_listen_mode_relays_on_commit_not_on_the_poll(db: Engine, queue: str) -> None:
    app = make_app(reliable_outbox_listen=True)
    listener = OutboxListener(app, poll_interval=60).start()
    try:
        assert listener.listening.wait(10)
        wait_until(lambda: listener.finished >= 1, 5)  # the catch-up run after LISTEN is over
        with Session(db) as session, session.begin():
            enqueue(session, TASK, ["r", None, 0], queue=queue, notify=False)
        time.sleep(0.5)
        assert broker_messages(queue) == []  # no notification: waits for the (60 s) poll
        latencies = []
        for i in range(1, 6):
            with Session(db) as session, session.begin():
                mid = enqueue(session, TASK, ["r", None, i], queue=queue, app=app)
            committed = time.monotonic()
            wait_until(lambda m=mid: m in {x["id"] for x in broker_messages(queue)}, 5, interval=0.002)
            latencies.append(time.monotonic() - committed)
        assert listener.woken >= 1 and max(latencies) < 0.5
        time.sleep(0.5)  # a notification whose row an earlier run already published may still arrive
        woken = listener.woken
        with Session(db) as session, session.begin():  # rolled back: notifies nobody
            enqueue(session, TASK, ["r", None, 99], queue=queue, app=app)
            session.rollback()
        time.sleep(0.5)
        assert listener.woken == woken
    finally:
        listener.stop()
    assert len(broker_messages(queue)) == 6  # the un-notified row went with the first notified run


def test_cleanup_deletes_only_published_rows_past_retention(db: Engine, queue: str) -> None:
    app = make_app(reliable_outbox_max_attempts=1)
    with Session(db) as session, session.begin():
        old = [enqueue(session, TASK, ["r", None, i], queue=queue) for i in range(5)]
        recent = enqueue(session, TASK, ["r", None, 5], queue=queue)
        dead = enqueue(session, "nobody.knows", [], queue=queue, app=app)
    relay_outbox(app)
    with db.begin() as conn:
        long_ago = datetime.now(timezone.utc) - timedelta(days=8)
        conn.execute(update(outbox).where(outbox.c.message_id.in_(old)).values(published_at=long_ago))
    with Session(db) as session, session.begin():
        pending = enqueue(session, TASK, ["r", None, 6], queue=queue)
    assert cleanup_published(db, timedelta(days=7), batch=2) == 5
    with db.connect() as conn:
        left = dict(conn.execute(text("SELECT message_id, state FROM reliable_outbox")).all())
    assert left == {recent: PUBLISHED, dead: DEAD, pending: PENDING}
