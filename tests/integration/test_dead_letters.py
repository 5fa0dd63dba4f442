"""The dead-letter store, replay, retention and ``reliable dlq`` commands, on PostgreSQL and SQLite.

PostgreSQL tests run in a schema of their own (``search_path`` in the URL) so counts and
purges never meet other tests' rows; replays publish to Redis db 6 without a worker and
count the messages in the queue's list (kombu's Redis transport keeps one list per queue).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import create_engine, delete, event, text, update

from celery_reliable import clients, migrate
from celery_reliable.deadletter import DeadLetter, DeadLetterNotFound, DeadLetterStore, body_dedup_key, replay_task_id
from celery_reliable.maintenance import purge_dead_letters
from celery_reliable.schema import dead_letters
from tests.conftest import DATABASE_URL
from tests.harness import CELERY, ROOT

BROKER = "redis://127.0.0.1:6379/6"
SCHEMA = f"dlq_test_{os.getpid()}"
PG_URL = f"{DATABASE_URL}?options=-csearch_path%3D{SCHEMA}"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A migrated schema of our own in the test database, dropped afterwards."""
    admin = create_engine(DATABASE_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"))
    migrate.upgrade(clients.engine_for(PG_URL))
    yield PG_URL
    clients.engine_for(PG_URL).dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dlq') / 'dlq.db'}"
    migrate.upgrade(clients.engine_for(url))
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url"))


@pytest.fixture()
def store(db_url: str) -> Iterator[DeadLetterStore]:
    """An empty dead-letter table."""
    engine = clients.engine_for(db_url)
    with engine.begin() as conn:
        conn.execute(delete(dead_letters))
    yield DeadLetterStore(engine)
    with engine.begin() as conn:
        conn.execute(delete(dead_letters))


@pytest.fixture()
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(BROKER)
    yield client
    for key in client.scan_iter("*dlq-test-*"):  # queues and kombu's bindings
        client.delete(key)
    client.close()


@pytest.fixture()
def queue(broker: redis.Redis) -> str:
    return f"dlq-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def app(db_url: str) -> Iterator[Celery]:
    celery = Celery("dlq_tests", broker=BROKER, set_as_current=False)
    celery.conf.update(reliable_database_url=db_url, reliable_redis_url=BROKER)
    yield celery
    celery.close()


def letter(n: int, queue: str = "q", task: str = "tasks.charge", reason: str = "exhausted", **kw: Any) -> DeadLetter:
    """A task letter with id ``tid-<n>`` and one argument ``n``."""
    fields: dict[str, Any] = {
        "queue": queue,
        "task_id": f"tid-{n}",
        "task_name": task,
        "args": [n],
        "kwargs": {"k": "é"},
        "headers": {"id": f"tid-{n}", "retries": 3, "trace": "abc"},
        "exception_type": "ValueError",
        "exception_message": f"boom {n}",
        "traceback": "Traceback (most recent call last):\nValueError: boom",
        "attempts": 4,
        "history": [{"attempt": 4, "at": "2026-11-01T00:00:00+00:00", "exception_type": "ValueError", "message": "x"}],
        **kw,
    }
    return DeadLetter(f"tid-{n}", reason, **fields)


def published(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in ``queue``, oldest first."""
    found = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append({"headers": message["headers"], "args": args, "kwargs": kwargs})
    return found


def together(n: int, fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn`` in ``n`` threads released at once; their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_add_is_idempotent_even_when_concurrent(store: DeadLetterStore) -> None:
    results = together(8, lambda: store.add(letter(1)))
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({row_id for row_id, _ in results}) == 1
    assert store.total() == 1
    assert store.add(letter(1, reason="poison")) == (results[0][0], False)  # the first letter stands
    assert store.get(results[0][0]).reason == "exhausted"


def test_a_letter_reads_back_whole(store: DeadLetterStore) -> None:
    row_id, _ = store.add(letter(1, args=[1, {2}], kwargs={"nul": "a\x00b"}))
    back = store.get(row_id)
    assert back.args == [1, {"__unserializable__": "{2}"}] and back.kwargs == {"nul": "a\x00b"}
    assert back.why_not_replayable() == "some arguments could not be stored as JSON" and back.replayable is False
    assert back.history[0]["attempt"] == 4 and back.traceback and back.created_at and back.created_at.tzinfo
    raw = b"\x80\x04not json \x00"
    bad_id, created = store.add(DeadLetter(body_dedup_key(raw), "undeserializable", queue="q", raw_body=raw))
    bad = store.get(bad_id)
    assert created and bad.raw_body_encoding == "base64" and base64.b64decode(bad.raw_body or "") == raw
    assert bad.task_name is None and bad.replayable is False and "no task name" in (bad.why_not_replayable() or "")
    with pytest.raises(DeadLetterNotFound, match="no dead letter with id 999999"):
        store.get(999_999)


def test_list_filters_and_pages(store: DeadLetterStore) -> None:
    ids = [store.add(letter(n, task=f"t{n % 2}", reason=("poison", "exhausted")[n % 3 == 0]))[0] for n in range(7)]
    assert [x.id for x in store.list()] == ids
    assert [x.task_id for x in store.list(task="t1")] == ["tid-1", "tid-3", "tid-5"]
    assert [x.task_id for x in store.list(reason="exhausted")] == ["tid-0", "tid-3", "tid-6"]
    assert [x.task_id for x in store.list(task="t0", reason="exhausted")] == ["tid-0", "tid-6"]
    pages, after = [], None
    while page := store.list(limit=3, after_id=after):
        pages.append([x.id for x in page])
        after = page[-1].id
    assert pages == [ids[0:3], ids[3:6], ids[6:]]
    with store.engine.begin() as conn:
        conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids[:4])).values(
            created_at=dead_letters.c.created_at - timedelta(days=2)))  # fmt: skip
    assert [x.id for x in store.list(since=timedelta(days=1))] == ids[4:]
    assert store.list(task="nobody") == []
    with pytest.raises(ValueError, match="reason must be one of"):
        store.list(reason="bored")


def test_count_by_reason_and_task(store: DeadLetterStore) -> None:
    for n in range(5):
        store.add(letter(n, task=f"t{n % 2}", reason="poison" if n < 2 else "permanent"))
    store.add(DeadLetter("body:x", "undeserializable", raw_body="?"))
    assert store.count() == {"permanent": 3, "poison": 2, "undeserializable": 1}
    assert store.count(by="task") == {"<unknown>": 1, "t0": 3, "t1": 2}
    assert store.total() == 6
    with pytest.raises(ValueError, match="count by"):
        store.count(by="queue")


def test_purge_deletes_old_letters_in_bounded_batches(store: DeadLetterStore) -> None:
    ids = [store.add(letter(n))[0] for n in range(25)]
    with store.engine.begin() as conn:
        conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids[:20])).values(
            created_at=dead_letters.c.created_at - timedelta(days=31)))  # fmt: skip
    deletes: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        assert store.total(older_than=timedelta(days=30)) == 20
        assert store.purge(timedelta(days=30), batch=7) == 20
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert len(deletes) == 3  # 7 + 7 + 6
    assert [x.id for x in store.list()] == ids[20:]
    assert store.purge(timedelta(days=30)) == 0
    with pytest.raises(ValueError, match="must not be negative"):
        store.purge(-1)


def test_replay_publishes_once_with_a_fresh_attempt_count(
    store: DeadLetterStore, app: Celery, broker: redis.Redis, queue: str
) -> None:
    row_id, _ = store.add(letter(1, queue=queue))
    first = store.replay(app, id=row_id)
    expected = replay_task_id(store.get(row_id), 0)
    assert [(r.status, r.task_id) for r in first] == [("published", expected)]
    second = store.replay(app, id=row_id)
    assert [(r.status, r.task_id) for r in second] == [("already_replayed", expected)]
    messages = published(broker, queue)
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["id"] == expected and headers["retries"] == 0 and headers["task"] == "tasks.charge"
    assert headers["trace"] == "abc" and headers["reliable_replay_of"] == row_id
    assert messages[0]["args"] == [1] and messages[0]["kwargs"] == {"k": "é"}
    marked = store.get(row_id)
    assert marked.replay_count == 1 and marked.replay_task_id == expected and marked.replayed_at
    assert store.replay(app, id=row_id, dry_run=True, again=True)[0].status == "dry_run"
    again = store.replay(app, id=row_id, again=True)[0]
    assert again.published and again.task_id == replay_task_id(marked, 1) != expected
    assert [m["headers"]["id"] for m in published(broker, queue)] == [expected, again.task_id]


def test_concurrent_replays_publish_each_letter_once(
    store: DeadLetterStore, app: Celery, broker: redis.Redis, queue: str
) -> None:
    for n in range(5):
        row_id, _ = store.add(letter(n, queue=queue))
        results = [r[0] for r in together(2, lambda row_id=row_id: store.replay(app, id=row_id))]
        assert sorted(r.status for r in results) == ["already_replayed", "published"]
        assert results[0].task_id == results[1].task_id
    assert len(published(broker, queue)) == 5
    batch = together(2, lambda: store.replay(app, task="tasks.charge", again=True))
    assert sum(r.published for results in batch for r in results) == 5  # once each, between both
    assert len(published(broker, queue)) == 10


def test_batch_replay_reports_letters_it_cannot_publish_and_goes_on(
    store: DeadLetterStore, app: Celery, broker: redis.Redis, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, _ = store.add(letter(1, queue=queue, reason="poison"))
    unjson, _ = store.add(letter(2, queue=queue, reason="poison", args=[{1}]))
    broken, _ = store.add(letter(3, queue=queue, reason="poison", task="tasks.broken"))
    malformed, _ = store.add(DeadLetter(body_dedup_key(b"\xff"), "poison", queue=queue, raw_body=b"\xff"))
    real_send = app.send_task

    def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tasks.broken":
            raise ConnectionError("broker went away")
        return real_send(name, *args, **kwargs)

    monkeypatch.setattr(app, "send_task", send_task)
    results = {r.letter_id: r for r in store.replay(app, reason="poison")}
    assert {k: r.status for k, r in results.items()} == {
        good: "published", unjson: "not_replayable", broken: "failed", malformed: "not_replayable"
    }  # fmt: skip
    assert "broker went away" in (results[broken].detail or "")
    assert "no task name" in (results[malformed].detail or "")
    assert store.get(broken).replayed_at is None and store.get(broken).replay_count == 0  # rolled back
    assert len(published(broker, queue)) == 1
    assert store.replay(app, id=malformed)[0].status == "not_replayable"
    with pytest.raises(DeadLetterNotFound):
        store.replay(app, id=999_999)
    with pytest.raises(ValueError, match="by id, or"):
        store.replay(app)


def test_a_crash_between_publish_and_commit_republishes_under_the_same_id(
    pg_url: str, broker: redis.Redis, queue: str
) -> None:
    engine = clients.engine_for(pg_url)
    store = DeadLetterStore(engine)
    with engine.begin() as conn:
        conn.execute(delete(dead_letters))
    row_id, _ = store.add(letter(1, queue=queue))
    fired = "failpoint:dlq_after_publish:fired"
    broker.delete(fired)
    script = (
        "import sys; from celery import Celery; from celery_reliable import clients;"
        "from celery_reliable.deadletter import DeadLetterStore;"
        f"app = Celery('crash', broker={BROKER!r}, set_as_current=False);"
        f"DeadLetterStore(clients.engine_for({pg_url!r})).replay(app, id={row_id})"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERY_RELIABLE_FAILPOINTS": "dlq_after_publish"}
    env["CELERY_RELIABLE_FAILPOINTS_URL"] = BROKER
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert proc.returncode == -9, proc.stderr  # the fault happened: killed after publishing
        assert broker.get(fired) == b"1"
        assert store.get(row_id).replayed_at is None  # ... and before the commit
        app = Celery("after_crash", broker=BROKER, set_as_current=False)
        result = store.replay(app, id=row_id)[0]
        app.close()
        ids = [m["headers"]["id"] for m in published(broker, queue)]
        assert result.published and ids == [result.task_id, result.task_id]  # a duplicate, never a loss
        assert store.get(row_id).replay_task_id == result.task_id
    finally:
        for key in broker.scan_iter("failpoint:dlq_after_publish:*"):
            broker.delete(key)
        with engine.begin() as conn:
            conn.execute(delete(dead_letters))


def test_retention_task_purges_old_letters_and_logs_it(
    store: DeadLetterStore, app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [store.add(letter(n))[0] for n in range(3)]
    with store.engine.begin() as conn:
        conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids[:2])).values(
            created_at=dead_letters.c.created_at - timedelta(days=2)))  # fmt: skip
    app.conf.reliable_dead_letter_retention = timedelta(days=1)
    with caplog.at_level(logging.INFO, logger="celery_reliable.maintenance"):
        assert purge_dead_letters(app) == {"deleted": 2}
    assert "purged 2 dead letter(s) older than 1 day" in caplog.text
    assert [x.id for x in store.list()] == ids[2:]


# ---- the ``reliable dlq`` commands -------------------------------------------------------


@pytest.fixture()
def cli(store: DeadLetterStore, app: Celery) -> Callable[..., Any]:
    """Invoke ``reliable <args>`` for ``app`` as celery's CLI would (``ctx.obj.app``)."""
    from click.testing import CliRunner

    from celery_reliable.cli import reliable

    def invoke(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(reliable, list(args), obj=SimpleNamespace(app=app), input=input)

    return invoke


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cli_lists_shows_and_counts(store: DeadLetterStore, cli: Callable[..., Any]) -> None:
    ids = [store.add(letter(n, task=f"t{n % 2}"))[0] for n in range(3)]
    store.add(DeadLetter(body_dedup_key(b"\xff"), "undeserializable", raw_body=b"\xff"))
    out = cli("dlq", "ls")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "(UTC)"] and len(lines) == 5
    assert f"{ids[1]}" in lines[2] and "exhausted" in lines[2] and "t1" in lines[2] and "ValueError: boom 1" in lines[2]
    assert "<unknown>" in lines[4]
    page = cli("dlq", "ls", "--limit", "2", "--task", "t0", "--since", "1h", "--json")
    assert [x["id"] for x in json.loads(page.output)] == [ids[0], ids[2]]
    assert "traceback" not in json.loads(page.output)[0]
    assert f"next page: --after {ids[2]}" in cli("dlq", "ls", "--limit", "2", "--task", "t0").output
    shown = cli("dlq", "show", str(ids[0]))
    assert shown.exit_code == 0 and "ValueError: boom" in shown.output
    assert "#4  2026-11-01T00:00:00+00:00  ValueError: x" in shown.output
    full = json.loads(cli("dlq", "show", str(ids[0]), "--json").output)
    assert full["traceback"].startswith("Traceback") and full["history"][0]["attempt"] == 4 and full["args"] == [0]
    counted = json.loads(cli("dlq", "count", "--json").output)
    assert counted == {"total": 4, "by_reason": {"exhausted": 3, "undeserializable": 1},
                       "by_task": {"<unknown>": 1, "t0": 2, "t1": 1}}  # fmt: skip
    assert "by reason:" in cli("dlq", "count").output


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cli_refuses_bad_input_clearly(store: DeadLetterStore, cli: Callable[..., Any]) -> None:
    cases = [
        (("dlq", "show", "999999"), 1, "no dead letter with id 999999"),
        (("dlq", "show", "abc"), 2, "'abc' is not a valid integer"),
        (("dlq", "replay", "999999"), 1, "no dead letter with id 999999"),
        (("dlq", "replay"), 2, "give a letter ID, or --task and/or --reason"),
        (("dlq", "replay", "1", "--task", "t"), 2, "not both"),
        (("dlq", "ls", "--since", "yesterday"), 2, "neither a duration (1h, 7d) nor an ISO 8601 date"),
        (("dlq", "ls", "--reason", "bored"), 2, "'bored' is not one of"),
        (("dlq", "purge", "--older-than", "30x"), 2, "'30x' is not a duration"),
        (("dlq", "purge"), 2, "Missing option '--older-than'"),
    ]
    for args, code, message in cases:
        out = cli(*args)
        assert (out.exit_code, message in out.output) == (code, True), (args, out.output)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cli_replays_once(store: DeadLetterStore, cli: Callable[..., Any], broker: redis.Redis, queue: str) -> None:
    row_id, _ = store.add(letter(1, queue=queue))
    store.add(letter(2, queue=queue))
    dry = cli("dlq", "replay", "--task", "tasks.charge", "--dry-run")
    assert dry.exit_code == 0 and "dry_run 2" in dry.output and published(broker, queue) == []
    first = cli("dlq", "replay", str(row_id))
    assert first.exit_code == 0 and "published" in first.output
    second = json.loads(cli("dlq", "replay", str(row_id), "--json").output)
    assert second[0]["status"] == "already_replayed" and second[0]["task_id"] in first.output
    batch = cli("dlq", "replay", "--task", "tasks.charge", "--reason", "exhausted")
    assert "already_replayed 1, published 1" in batch.output
    assert len(published(broker, queue)) == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_cli_purge_asks_first(store: DeadLetterStore, cli: Callable[..., Any]) -> None:
    ids = [store.add(letter(n))[0] for n in range(3)]
    assert "no dead letters older than 30 days" in cli("dlq", "purge", "--older-than", "30d").output
    with store.engine.begin() as conn:
        conn.execute(update(dead_letters).where(dead_letters.c.id.in_(ids[:2])).values(
            created_at=dead_letters.c.created_at - timedelta(days=40)))  # fmt: skip
    refused = cli("dlq", "purge", "--older-than", "30d", input="n\n")
    assert refused.exit_code == 1 and "Delete 2 dead letter(s) older than 30 days" in refused.output
    assert store.total() == 3
    agreed = cli("dlq", "purge", "--older-than", "30d", input="y\n")
    assert agreed.exit_code == 0 and "deleted 2 dead letter(s)" in agreed.output and store.total() == 1
    assert "deleted 1" in cli("dlq", "purge", "--older-than", "0", "--yes").output


def test_cli_needs_a_database() -> None:
    from click.testing import CliRunner

    from celery_reliable.cli import reliable

    bare = Celery("bare", broker=BROKER, set_as_current=False)
    out = CliRunner().invoke(reliable, ["dlq", "ls"], obj=SimpleNamespace(app=bare))
    assert out.exit_code == 2 and "reliable_database_url is not set" in out.output


def _celery(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_DATABASE_URL": database_url}
    env.update(TEST_BROKER_URL=BROKER, TEST_BACKEND_URL=BROKER, TEST_RELIABLE_REDIS=BROKER)
    return subprocess.run(
        [CELERY, "-A", "tests.worker_app", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_celery_command_line_and_status(store: DeadLetterStore, pg_url: str) -> None:
    store.add(letter(1, reason="poison"))
    out = _celery("reliable", "dlq", "count", "--json", database_url=pg_url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["by_reason"] == {"poison": 1}
    status = _celery("reliable", "status", "--json", database_url=pg_url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["dead_letters"] == {"total": 1, "by_reason": {"poison": 1}}
    secret = f"postgresql+psycopg://root:hunter2@127.0.0.1/test?options=-csearch_path%3D{SCHEMA}_missing"
    missing = _celery("reliable", "dlq", "ls", database_url=secret)
    assert missing.returncode == 1 and "no reliable_dead_letters table" in missing.stderr
    assert "hunter2" not in missing.stderr + missing.stdout and "root:***@" in missing.stderr
