"""The ``inbox`` task option and message ids, checked at declaration (no services needed)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery import Celery

from celery_reliable import ConfigurationError, ReliableTask
from celery_reliable.errors import DuplicateMessage, IdempotencyError
from celery_reliable.inbox import DEFAULT_TTL
from celery_reliable.inbox.store import MAX_ID_CHARS, stored_id


@pytest.fixture()
def app() -> Celery:
    return Celery("unit", broker="memory://", set_as_current=False)


def test_inbox_true_uses_the_task_id(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True, inbox=True)
    def consume(self, payload):
        return None

    entry = consume._reliable_inbox.entry(consume.name, "task-123", ({"a": 1},), {})
    assert (entry.consumer, entry.message_id) == (consume.name, "task-123")
    assert entry.ttl_ms == int(DEFAULT_TTL.total_seconds() * 1000)


def test_inbox_template_and_ttl(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True, inbox="evt:{event[id]}", inbox_ttl=timedelta(hours=1))
    def consume(self, event):
        return None

    entry = consume._reliable_inbox.entry(consume.name, "t", ({"id": 42},), {})
    assert entry.message_id == "evt:42" and entry.ttl_ms == 3_600_000


def test_inbox_off_by_default(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask)
    def plain():
        return None

    assert plain._reliable_inbox is None


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"inbox": "{missing}"}, "inbox"),
        ({"inbox": 3}, "inbox"),
        ({"inbox_ttl": 60}, "inbox_ttl"),
        ({"inbox": True, "inbox_ttl": 0.5}, "inbox_ttl"),
    ],
)
def test_wrong_inbox_options_fail_at_declaration(app: Celery, options: dict, name: str) -> None:
    with pytest.raises(ConfigurationError) as info:

        @app.task(shared=False, base=ReliableTask, **options)
        def consume(event_id):
            return None

        consume.name  # noqa: B018  # Celery creates task classes lazily: the first use declares it

    assert info.value.name == name


def test_long_or_odd_ids_are_stored_hashed() -> None:
    assert stored_id("evt-1") == "evt-1"
    long_id = "x" * (MAX_ID_CHARS + 1)
    assert stored_id(long_id).startswith("#") and len(stored_id(long_id)) == 65
    assert stored_id(long_id) != stored_id(long_id + "y")
    assert stored_id("nul\x00id").startswith("#")
    with pytest.raises(ValueError):
        stored_id("")


def test_duplicate_message_error() -> None:
    exc = DuplicateMessage("billing", "evt-1")
    assert isinstance(exc, IdempotencyError)
    assert (exc.consumer, exc.message_id) == ("billing", "evt-1")
    assert type(exc)(*exc.args).args == exc.args
