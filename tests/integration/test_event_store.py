"""The event store on PostgreSQL: optimistic concurrency under real contention, the retry
helper converging, positions in commit order, upcasting, snapshots, and publishing
through the outbox only on commit.

Everything runs in the ``eventstore_test`` database (see tests/eventstore_app.py) with a
fresh stream id per test.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from celery_reliable import migrate
from celery_reliable.eventstore import (
    ANY_VERSION,
    ConcurrencyConflict,
    DuplicateEvent,
    NewEvent,
    RecordedEvent,
    append,
    head_position,
    load,
    read_all,
    read_snapshot,
    read_stream,
    run_command,
    save,
    stream_version,
)
from celery_reliable.eventstore.model import events as events_table
from celery_reliable.outbox import relay_outbox
from tests.eventstore_app import BROKER_URL, DATABASE_URL, Account, app, consume_balances, eventstore_engine, upcasters


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    e = eventstore_engine()
    yield e
    e.dispose()


def sid(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def deposit(session: Session, stream_id: str, cents: int = 100) -> None:
    account = load(session, Account, stream_id)
    account.deposit(cents)
    save(session, account)


# --------------------------------------------------------------------- (a) concurrency


@pytest.mark.parametrize("start_version", [0, 3])
def test_concurrent_appends_one_winner_per_version(eng: Engine, start_version: int) -> None:
    stream = sid()
    for _ in range(start_version):
        with Session(eng) as s, s.begin():
            deposit(s, stream)
    threads = 8
    barrier = threading.Barrier(threads)
    outcomes: list[object] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        with Session(eng) as s:
            s.begin()
            try:
                barrier.wait()
                append(s, stream, [NewEvent("Deposited", {"cents": i}, 3)], expected_version=start_version)
                time.sleep(0.05)  # hold the row: the others must wait for this commit, then conflict
                s.commit()
                result: object = i
            except ConcurrencyConflict as exc:
                s.rollback()
                result = exc
        with lock:
            outcomes.append(result)

    pool = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    winners = [o for o in outcomes if isinstance(o, int)]
    conflicts = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
    assert len(outcomes) == threads
    assert len(winners) == 1 and len(conflicts) == threads - 1
    for exc in conflicts:
        assert (exc.stream_id, exc.expected_version, exc.actual_version) == (stream, start_version, start_version + 1)
        assert stream in str(exc) and f"expected version {start_version}" in str(exc)
    with Session(eng) as s:
        stored = read_stream(s, stream, upcasters=upcasters)
        assert [e.version for e in stored] == list(range(1, start_version + 2))
        assert stored[-1].data["cents"] == winners[0]
        assert stream_version(s, stream) == start_version + 1


def _command_worker(stream: str, commands: int, results: multiprocessing.Queue) -> None:
    """In a child process: run ``commands`` deposit commands through run_command, counting conflicts."""
    engine = create_engine(DATABASE_URL)
    conflicts = 0

    def command(session: Session) -> int:
        nonlocal conflicts
        account = load(session, Account, stream)
        account.deposit(1)
        time.sleep(random.uniform(0, 0.01))  # decide slowly: other processes get in between
        try:
            save(session, account)
        except ConcurrencyConflict:
            conflicts += 1
            raise
        return account.version

    try:
        done = [run_command(engine, command) for _ in range(commands)]  # the defaults: 3 retries, backoff
    except BaseException as exc:  # report it: the parent would otherwise wait for a result in vain
        results.put(([], repr(exc)))
        raise
    finally:
        engine.dispose()
    results.put((done, conflicts))


def test_run_command_converges_across_processes(eng: Engine) -> None:
    stream = sid()
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = ctx.Queue()
    procs, per = 6, 5
    children = [ctx.Process(target=_command_worker, args=(stream, per, results)) for _ in range(procs)]
    for p in children:
        p.start()
    got = [results.get(timeout=60) for _ in children]
    assert all(isinstance(c, int) for _, c in got), got
    for p in children:
        p.join(10)
        assert p.exitcode == 0
    versions = sorted(v for done, _ in got for v in done)
    conflicts = sum(c for _, c in got)
    assert versions == list(range(1, procs * per + 1))  # every command applied once, no version twice
    assert conflicts > 0, "the processes never collided: the test did not exercise the retry"
    with Session(eng) as s:
        stored = read_stream(s, stream)
        assert [e.version for e in stored] == list(range(1, procs * per + 1))
        assert load(s, Account, stream, use_snapshot=False).balance == procs * per


def test_run_command_gives_up_after_three_retries(eng: Engine) -> None:
    stream = sid()
    with Session(eng) as s, s.begin():
        deposit(s, stream)
    calls: list[int] = []
    waits: list[float] = []

    def stale(session: Session) -> None:
        calls.append(1)
        append(session, stream, [NewEvent("Deposited", {"cents": 1}, 3)], expected_version=0)

    with pytest.raises(ConcurrencyConflict) as info:
        run_command(eng, stale, sleep=waits.append)
    assert len(calls) == 4 and len(waits) == 3  # the first attempt and 3 retries
    assert all(0 <= w <= 0.1 * 2**i for i, w in enumerate(waits))
    assert info.value.actual_version == 1


# --------------------------------------------------------------------- global positions


def test_positions_follow_commit_order_not_insert_order(eng: Engine) -> None:
    first, second = sid("gap"), sid("gap")
    with Session(eng) as s:
        start = head_position(s)
    early = Session(eng)
    early.begin()
    append(early, first, [NewEvent("Deposited", {"cents": 1}, 3)], expected_version=0)  # inserted first ...
    with Session(eng) as s, s.begin():
        append(s, second, [NewEvent("Deposited", {"cents": 2}, 3)], expected_version=0)  # ... committed first
    with Session(eng) as s:
        seen = read_all(s, after=start)
    assert [e.stream_id for e in seen] == [second]  # the open transaction's event is not readable yet
    checkpoint = seen[-1].position
    assert checkpoint is not None
    early.commit()
    early.close()
    with Session(eng) as s:
        later = read_all(s, after=checkpoint)
    # A bigserial at insert would have given `first` the lower position: a reader resuming
    # after `checkpoint` would have skipped it for ever.
    assert [e.stream_id for e in later] == [first]
    assert later[0].position is not None and later[0].position > checkpoint


def test_reader_never_skips_an_event_under_concurrent_appends(eng: Engine) -> None:
    streams = [sid("pos") for _ in range(4)]
    per_stream = 15
    with Session(eng) as s:
        start = head_position(s)
    stop = threading.Event()
    observed: list[RecordedEvent] = []

    def writer(stream: str) -> None:
        rng = random.Random(stream)
        for version in range(per_stream):
            with Session(eng) as s, s.begin():
                append(s, stream, [NewEvent("Deposited", {"cents": version}, 3)], expected_version=version)
                time.sleep(rng.uniform(0, 0.01))  # commits land in another order than inserts

    def reader() -> None:
        after = start
        while True:
            finished = stop.is_set()
            with Session(eng) as s:
                batch = read_all(s, after=after, limit=7)
            for event in batch:
                if event.stream_id in streams:
                    observed.append(event)
                assert event.position is not None and event.position > after
                after = event.position
            if finished and not batch:
                return

    pool = [threading.Thread(target=writer, args=(stream,)) for stream in streams]
    read_thread = threading.Thread(target=reader)
    read_thread.start()
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    stop.set()
    read_thread.join(60)
    with Session(eng) as s:
        stored = s.execute(
            select(events_table.c.event_id)
            .where(events_table.c.stream_id.in_(streams))
            .order_by(events_table.c.position)
        ).scalars()
        everything = list(stored)
    assert len(everything) == len(streams) * per_stream
    assert [e.event_id for e in observed] == everything  # nothing skipped, nothing twice, commit order
    for stream in streams:  # per stream, positions follow versions
        assert [e.version for e in observed if e.stream_id == stream] == list(range(1, per_stream + 1))


# --------------------------------------------------------------------- (b) upcasting, snapshots


def test_old_event_is_upcast_on_read(eng: Engine) -> None:
    stream = sid()
    with Session(eng) as s, s.begin():
        append(s, stream, [NewEvent("Deposited", {"euros": 12.5}, schema_version=1)], expected_version=0)
        append(s, stream, [NewEvent("Deposited", {"cents": 300}, schema_version=2)], expected_version=1)
    with Session(eng) as s:
        stored_raw = s.execute(
            text("SELECT schema_version, data FROM reliable_events WHERE stream_id = :s ORDER BY version"),
            {"s": stream},
        ).all()
        assert [(v, json.loads(d)) for v, d in stored_raw] == [(1, {"euros": 12.5}), (2, {"cents": 300})]  # untouched
        lifted = read_stream(s, stream, upcasters=upcasters)
        assert [(e.schema_version, e.data) for e in lifted] == [
            (3, {"cents": 1250, "currency": "EUR"}),
            (3, {"cents": 300, "currency": "EUR"}),
        ]
        account = load(s, Account, stream, upcasters=upcasters)
        assert (account.balance, account.version) == (1550, 2)
        with pytest.raises(KeyError):  # without the upcasters the v1 shape reaches the aggregate
            load(s, Account, stream)


def test_snapshot_load_equals_full_replay(eng: Engine) -> None:
    stream = sid()
    rng = random.Random(7)
    for _ in range(6):  # saves of 1-6 events: snapshots are taken when a save crosses a multiple of 5
        with Session(eng) as s, s.begin():
            account = load(s, Account, stream)
            for _ in range(rng.randint(1, 6)):
                if account.balance > 100 and rng.random() < 0.3:
                    account.withdraw(rng.randint(1, account.balance))
                else:
                    account.deposit(rng.randint(1, 500))
            save(s, account)
    with Session(eng) as s:
        total = stream_version(s, stream)
        snap = read_snapshot(s, stream)
        assert snap is not None and snap.aggregate_type == "Account"
        assert total - 5 < snap.version <= total and snap.version >= 5
        from_snapshot = load(s, Account, stream)
        full = load(s, Account, stream, use_snapshot=False)
        assert from_snapshot.version == full.version == total
        assert from_snapshot.snapshot_state() == full.snapshot_state()
        assert len(read_stream(s, stream, after_version=snap.version)) == total - snap.version  # what load replayed
        # A snapshot whose state differs from the replay would show: prove the snapshot is used.
        s.execute(
            text("UPDATE reliable_event_snapshots SET state = :st WHERE stream_id = :s"),
            {"st": json.dumps({**snap.state, "balance": -1}), "s": stream},
        )
        assert load(s, Account, stream).balance == -1 + (full.balance - snap.state["balance"])
        s.rollback()


def test_snapshot_of_another_shape_is_ignored(eng: Engine) -> None:
    stream = sid()
    with Session(eng) as s, s.begin():
        account = load(s, Account, stream)
        for _ in range(5):
            account.deposit(10)
        save(s, account)
    with Session(eng) as s, s.begin():
        s.execute(text("UPDATE reliable_event_snapshots SET schema_version = 99 WHERE stream_id = :s"), {"s": stream})
        assert load(s, Account, stream).balance == 50


# --------------------------------------------------------------------- (c) publishing


def _queue_messages(queue: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(BROKER_URL)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    import base64

    out = []
    for item in reversed(raw):  # kombu LPUSHes: the tail is the oldest
        msg = json.loads(item)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"id": msg["headers"]["id"], "task": msg["headers"]["task"], "kwargs": body[1]})
    return out


def test_events_reach_the_broker_only_if_the_append_commits(eng: Engine) -> None:
    queue = f"es-{uuid.uuid4().hex[:10]}"
    committed, rolled_back = sid("pub"), sid("pub")
    try:
        with Session(eng) as s, s.begin():
            account = load(s, Account, committed)
            account.deposit(100)
            account.deposit(200)
            recorded = save(s, account, publish=consume_balances, app=app, queue=queue)
        with Session(eng) as s:
            s.begin()
            account = load(s, Account, rolled_back)
            account.deposit(999)
            doomed = save(s, account, publish=consume_balances, app=app, queue=queue)
            assert (
                s.execute(
                    text("SELECT count(*) FROM reliable_outbox WHERE message_id = :m"), {"m": doomed[0].event_id}
                ).scalar()
                == 1
            )
            s.rollback()
        with Session(eng) as s:
            assert (
                s.execute(
                    text("SELECT count(*) FROM reliable_outbox WHERE message_id = :m"), {"m": doomed[0].event_id}
                ).scalar()
                == 0
            )
            assert stream_version(s, rolled_back) == 0
        stats = relay_outbox(app, engine=eng)
        assert stats["published"] >= 2
        messages = _queue_messages(queue)
        assert [m["id"] for m in messages] == [e.event_id for e in recorded]  # event id = message id, in order
        assert {m["task"] for m in messages} == {consume_balances.name}
        first = RecordedEvent.from_message(messages[0]["kwargs"]["event"])  # type: ignore[index]
        assert (first.stream_id, first.version, first.type, first.data) == (
            committed,
            1,
            "Deposited",
            {"cents": 100, "currency": "EUR"},
        )
        assert all(doomed[0].event_id not in json.dumps(m) for m in messages)
        with Session(eng) as s:
            keys = s.execute(
                text("SELECT DISTINCT ordering_key FROM reliable_outbox WHERE message_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": [e.event_id for e in recorded]},
            ).scalars()
            assert list(keys) == [committed]  # ordering key = stream id
    finally:
        redis.Redis.from_url(BROKER_URL).delete(queue)


# --------------------------------------------------------------------- other cases


def test_any_version_appends_whatever_the_version(eng: Engine) -> None:
    stream = sid()
    with Session(eng) as s, s.begin():
        first = append(s, stream, [NewEvent("Deposited", {"cents": 1}, 3)], expected_version=ANY_VERSION)
        two = [NewEvent("Deposited", {"cents": 2}, 3), NewEvent("Deposited", {"cents": 3}, 3)]
        more = append(s, stream, two, expected_version=ANY_VERSION)
    assert [e.version for e in first + more] == [1, 2, 3]
    with Session(eng) as s:
        assert stream_version(s, stream) == 3


def test_duplicate_event_id_is_refused(eng: Engine) -> None:
    stream = sid()
    event = NewEvent("Deposited", {"cents": 1}, 3)
    with Session(eng) as s, s.begin():
        append(s, stream, [event], expected_version=0)
    with pytest.raises(DuplicateEvent, match=event.event_id), Session(eng) as s, s.begin():
        append(s, stream, [event], expected_version=1)
    with pytest.raises(ValueError, match="same event id twice"), Session(eng) as s, s.begin():
        append(s, stream, [event, event], expected_version=1)
    with Session(eng) as s:
        assert stream_version(s, stream) == 1


def test_sqlite_store(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    migrate.upgrade(engine)
    stream = sid()
    with Session(engine) as s, s.begin():
        account = load(s, Account, stream)
        for cents in (5, 6, 7, 8, 9, 10):
            account.deposit(cents)
        save(s, account)
    with Session(engine) as s:
        assert [e.position for e in read_all(s)] == [1, 2, 3, 4, 5, 6]
        assert (
            load(s, Account, stream).snapshot_state() == load(s, Account, stream, use_snapshot=False).snapshot_state()
        )
        assert read_snapshot(s, stream) is not None
    with pytest.raises(ConcurrencyConflict) as info, Session(engine) as s, s.begin():
        append(s, stream, [NewEvent("Deposited", {"cents": 1}, 3)], expected_version=2)
    assert info.value.actual_version == 6
    engine.dispose()


def test_run_command_retries_serialization_failures(eng: Engine) -> None:
    stream = sid()
    with Session(eng) as s, s.begin():
        deposit(s, stream)
    rr = sessionmaker(eng.execution_options(isolation_level="REPEATABLE READ"))
    attempts: list[int] = []
    gate = threading.Event()

    def command(session: Session) -> int:
        attempts.append(1)
        account = load(session, Account, stream)  # the snapshot of this transaction starts here
        if len(attempts) == 1:
            with Session(eng) as other, other.begin():  # another writer commits in between
                deposit(other, stream)
            gate.set()
        account.deposit(5)
        save(session, account)
        return account.version

    assert run_command(rr, command, sleep=lambda _: None) == 3
    assert len(attempts) == 2 and gate.is_set()
