"""Projections: a read model built live by a real worker from events published through
the outbox (with duplicate deliveries) equals the same read model rebuilt from position 0
by the ``projection rebuild`` command.

The worker runs ``tests.eventstore_app``; the delivery ledger (Redis, duplicates kept)
shows every delivery, the effects ledger (``es_effects``, no unique constraint) every
application, so an event applied twice would show.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable.eventstore import (
    NewEvent,
    RecordedEvent,
    append,
    catch_up,
    checkpoint,
    head_position,
    load,
    read_stream,
    rebuild,
    run_command,
    save,
)
from celery_reliable.eventstore.cli import projection as projection_cli
from celery_reliable.inbox.store import delete_expired as inbox_cleanup
from celery_reliable.inbox.store import inbox as inbox_table
from celery_reliable.outbox import relay_outbox
from tests.eventstore_app import (
    BROKER_URL,
    Account,
    app,
    balances,
    consume_balances,
    deliveries,
    eventstore_engine,
    forget_deliveries,
    upcasters,
)
from tests.harness import WorkerProcess, wait_until


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    e = eventstore_engine()
    yield e
    e.dispose()


@pytest.fixture()
def queue() -> Iterator[str]:
    name = f"es-{uuid.uuid4().hex[:10]}"
    forget_deliveries()
    yield name
    redis.Redis.from_url(BROKER_URL).delete(name)
    forget_deliveries()


def read_model(eng: Engine) -> dict[str, tuple[int, int]]:
    with eng.connect() as conn:
        return {a: (b, n) for a, b, n in conn.execute(text("SELECT account, balance, events FROM es_balances"))}


def effects(eng: Engine) -> Counter[str]:
    with eng.connect() as conn:
        return Counter(conn.execute(text("SELECT event_id FROM es_effects")).scalars())


def test_live_projection_with_duplicates_equals_rebuild(eng: Engine, queue: str, tmp_path: Path) -> None:
    worker = WorkerProcess("es-w1", {"TEST_QUEUE": queue}, tmp_path, app="tests.eventstore_app", concurrency=2)
    try:
        worker.wait_ready()
        accounts = [f"acct-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        rng = random.Random(11)

        def command(session: Session) -> list[RecordedEvent]:
            account = load(session, Account, rng.choice(accounts), upcasters=upcasters)
            if account.balance > 50 and rng.random() < 0.3:
                account.withdraw(rng.randint(1, account.balance))
            else:
                account.deposit(rng.randint(1, 100))
            return save(session, account, publish=consume_balances, app=app, queue=queue)

        published = [e for _ in range(30) for e in run_command(eng, command)]
        with Session(eng) as s, s.begin():  # an event stored in an old shape: upcast by the projection
            old = append(
                s,
                accounts[0],
                [NewEvent("Deposited", {"euros": 2.5}, schema_version=1)],
                expected_version=load(s, Account, accounts[0], upcasters=upcasters).version,
                publish=consume_balances,
                app=app,
                queue=queue,
            )
        published += old
        assert relay_outbox(app, engine=eng)["published"] == len(published)
        # Duplicate deliveries: the same event (same message id) sent again.
        duplicated = [published[0], published[5], published[-1]]
        for event in duplicated:
            consume_balances.apply_async(kwargs={"event": event.as_message()}, task_id=event.event_id, queue=queue)
        expected_deliveries = len(published) + len(duplicated)
        wait_until(lambda: len(deliveries()) >= expected_deliveries, 30, what="every delivery")
        wait_until(lambda: sum(effects(eng).values()) >= len(published), 30, what="every effect")
        runs = Counter(d.split("|")[0] for d in deliveries())
        assert all(runs[e.event_id] == 2 for e in duplicated), runs  # the duplicates really were delivered
        assert sum(runs.values()) == expected_deliveries
        live_effects = effects(eng)
        assert live_effects == Counter({e.event_id: 1 for e in published})  # ... and applied once
        live = read_model(eng)
        with Session(eng) as s:  # the read model agrees with the aggregates
            for acct in accounts:
                agg = load(s, Account, acct, upcasters=upcasters)
                if agg.version:
                    assert live[acct] == (agg.balance, agg.version)
        assert live[accounts[0]][0] >= 250  # the upcast v1 event counted 250 cents

        # Rebuild from scratch with the CLI command: same read model, every event applied once more.
        result = CliRunner().invoke(
            projection_cli, ["rebuild", balances.name, "--yes"], obj=SimpleNamespace(app=app), catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert f"{balances.name}: rebuilt from {len(published)} events" in result.output
        assert read_model(eng) == live
        assert effects(eng) == Counter({e.event_id: 2 for e in published})
        with Session(eng) as s:
            assert checkpoint(s, balances.name) == head_position(s)

        # After the rebuild a late duplicate still applies nothing; new events still apply live.
        consume_balances.apply_async(
            kwargs={"event": published[3].as_message()}, task_id=published[3].event_id, queue=queue
        )
        more = [e for _ in range(3) for e in run_command(eng, command)]
        relay_outbox(app, engine=eng)
        wait_until(lambda: len(deliveries()) >= expected_deliveries + 1 + len(more), 30, what="the late deliveries")
        wait_until(lambda: sum(effects(eng).values()) >= 2 * len(published) + len(more), 30, what="new effects")
        after = effects(eng)
        assert after[published[3].event_id] == 2 and all(after[e.event_id] == 1 for e in more)
        live_again = read_model(eng)
        rebuilt = rebuild(eng, balances)
        assert rebuilt.read == len(published) + len(more) and rebuilt.applied == rebuilt.read
        assert read_model(eng) == live_again
        listing = CliRunner().invoke(projection_cli, ["ls"], obj=SimpleNamespace(app=app), catch_exceptions=False)
        assert balances.name in listing.output and "behind        0" in listing.output
    finally:
        worker.stop(grace=5)
    assert "Traceback" not in worker.log(), worker.log()[-3000:]


def test_catch_up_applies_each_event_once(eng: Engine) -> None:
    stream = f"acct-{uuid.uuid4().hex[:8]}"
    rebuild(eng, balances)
    with Session(eng) as s, s.begin():
        append(s, stream, [NewEvent("Deposited", {"cents": 5, "currency": "EUR"}, 3)], expected_version=0)
    with Session(eng) as s, s.begin():
        append(
            s,
            stream,
            [NewEvent("Deposited", {"cents": 7}, 2), NewEvent("Withdrawn", {"cents": 2}), NewEvent("Opened", {})],
            expected_version=1,
        )
    first = catch_up(eng, balances)
    assert (first.read, first.applied) == (4, 3)  # "Opened" is not handled
    again = catch_up(eng, balances)
    assert (again.read, again.applied) == (0, 0)
    assert read_model(eng)[stream] == (10, 3)
    with Session(eng) as s:
        ids = [e.event_id for e in read_stream(s, stream)]
    assert [effects(eng)[i] for i in ids] == [1, 1, 1, 0]


    # The projection remembers applied events as long as it exists, not for inbox_ttl
    # (7 days): a catch-up from an old checkpoint months later must not apply them again.
    with eng.connect() as conn:
        years_left = conn.execute(
            select(func.min(inbox_table.c.expires_at) - func.now()).where(
                inbox_table.c.consumer == balances.name, inbox_table.c.message_id.in_(ids)
            )
        ).scalar_one()
    assert years_left.days > 50 * 365
    with eng.begin() as conn:  # a checkpoint far behind, as a projection fed only live has
        conn.execute(text("UPDATE reliable_projections SET position = 0 WHERE name = :n"), {"n": balances.name})
    inbox_cleanup(eng, 1000)
    late = catch_up(eng, balances)
    assert late.read >= 4 and late.applied == 0
    assert [effects(eng)[i] for i in ids] == [1, 1, 1, 0]


def test_rebuild_of_unknown_projection_is_a_clear_error() -> None:
    result = CliRunner().invoke(
        projection_cli, ["rebuild", "no-such-projection", "--yes"], obj=SimpleNamespace(app=app)
    )
    assert result.exit_code != 0
    assert "no projection named 'no-such-projection'" in result.output and balances.name in result.output
