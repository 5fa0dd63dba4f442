"""enqueue(): the message exists if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery import chain
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable import migrate
from celery_reliable.errors import MessageTooLarge, SerializationError
from celery_reliable.jsoncodec import loads
from celery_reliable.outbox import PENDING, PUBLISHED, aenqueue, enqueue, outbox, relay_outbox
from tests.outbox_support import (
    DATABASE_URL,
    broker_messages,
    drop_queue,
    make_app,
    new_run,
    outbox_engine,
    queue_for,
    reset_outbox,
    states,
)


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


def test_rolled_back_transaction_publishes_nothing_committed_publishes_once(db: Engine, queue: str) -> None:
    app = make_app()
    with Session(db) as session:
        with session.begin():
            enqueue(session, "outbox_tests.consume", ["r", None, 1], queue=queue)
            session.rollback()
        assert states(db) == {}
        assert relay_outbox(app)["published"] == 0
        assert broker_messages(queue) == []

        with session.begin():
            message_id = enqueue(session, "outbox_tests.consume", ["r", None, 2], queue=queue)
            assert relay_outbox(app)["published"] == 0  # not committed yet: invisible to the relay
        assert broker_messages(queue) == []
    assert relay_outbox(app)["published"] == 1
    assert relay_outbox(app)["published"] == 0  # published rows are not claimed again
    [message] = broker_messages(queue)
    assert message == {"id": message_id, "task": "outbox_tests.consume", "args": ["r", None, 2]}
    assert states(db) == {PUBLISHED: 1}


def test_exception_in_the_business_block_rolls_the_message_back(db: Engine, queue: str) -> None:
    with pytest.raises(RuntimeError), Session(db) as session, session.begin():
        enqueue(session, "outbox_tests.consume", ["r", None, 1], queue=queue)
        raise RuntimeError("business failure")
    assert relay_outbox(make_app())["published"] == 0
    assert broker_messages(queue) == []


def test_signature_task_id_and_options_are_kept(db: Engine, queue: str) -> None:
    app = make_app()
    sig = app.signature("outbox_tests.consume", ("r", "k", 1), queue=queue, headers={"tenant": "t1"})
    with Session(db) as session, session.begin():
        first = enqueue(session, sig, countdown=30, expires=60)
        chosen = enqueue(session, sig.clone(task_id="my-own-id"))
    assert chosen == "my-own-id"
    with db.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.message_id == first)).one()
    options = loads(row.options)
    assert row.state == PENDING and row.attempts == 0 and row.next_attempt_at is None
    assert options["queue"] == queue and options["headers"] == {"tenant": "t1"} and "countdown" not in options
    eta = datetime.fromisoformat(options["eta"])
    expires = datetime.fromisoformat(options["expires"])
    now = datetime.now(timezone.utc)
    assert timedelta(seconds=25) < eta - now <= timedelta(seconds=30)  # counted from the enqueue
    assert timedelta(seconds=55) < expires - now <= timedelta(seconds=60)
    assert relay_outbox(app)["published"] == 2
    assert {m["id"] for m in broker_messages(queue)} == {first, "my-own-id"}


def test_bad_arguments_fail_before_anything_is_written(db: Engine) -> None:
    app = make_app(reliable_max_message_bytes=1000)
    with Session(db) as session, session.begin():
        with pytest.raises(SerializationError, match=r"args\[0\]"):
            enqueue(session, "outbox_tests.consume", [{1, 2}], app=app)
        with pytest.raises(SerializationError, match="options"):
            enqueue(session, "outbox_tests.consume", [], app=app, headers={"when": object()})
        with pytest.raises(MessageTooLarge, match="1,000"):
            enqueue(session, "outbox_tests.consume", ["x" * 2000], app=app)
        with pytest.raises(TypeError, match="chain"):
            enqueue(session, chain(app.signature("a"), app.signature("b")))
        with pytest.raises(TypeError, match="not beside it"):
            enqueue(session, app.signature("a", (1,)), [2])
        with pytest.raises(ValueError, match="ordering key"):
            enqueue(session, "outbox_tests.consume", [], app=app, ordering_key="")
        with pytest.raises(ValueError, match="producer"):
            enqueue(session, "outbox_tests.consume", [], app=app, producer=object())
    assert states(db) == {}


def test_aenqueue_writes_in_the_async_session(db: Engine, queue: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def write(commit: bool) -> str:
        aeng = create_async_engine(DATABASE_URL)
        try:
            async with AsyncSession(aeng) as session:
                async with session.begin():
                    mid = await aenqueue(session, "outbox_tests.consume", ["r", None, 1], queue=queue, notify=True)
                    if not commit:
                        await session.rollback()
                return mid
        finally:
            await aeng.dispose()

    asyncio.run(write(commit=False))
    kept = asyncio.run(write(commit=True))
    assert relay_outbox(make_app())["published"] == 1
    assert [m["id"] for m in broker_messages(queue)] == [kept]


def test_sqlite_outbox(tmp_path: Path, queue: str) -> None:
    eng = create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    migrate.upgrade(eng)
    app = make_app(reliable_database_url=f"sqlite:///{tmp_path / 'outbox.db'}")
    with Session(eng) as session, session.begin():
        ids = [enqueue(session, "outbox_tests.consume", ["r", "k", i], queue=queue, ordering_key="k") for i in range(3)]
        enqueue(session, "outbox_tests.consume", ["r", None, 9], queue=queue)
    with Session(eng) as session, session.begin():
        enqueue(session, "outbox_tests.consume", ["r", None, 10], queue=queue)
        session.rollback()
    assert relay_outbox(app, engine=eng)["published"] == 4
    assert [m["id"] for m in broker_messages(queue)][:3] == ids
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reliable_outbox WHERE state = 'published'")).scalar() == 4
    eng.dispose()
