"""Bad input to the event store fails before anything is written, with a clear message."""

from __future__ import annotations

import random
from typing import Any

import pytest

from celery_reliable.errors import SerializationError
from celery_reliable.eventstore import (
    ANY_VERSION,
    ConcurrencyConflict,
    NewEvent,
    Projection,
    RecordedEvent,
    Upcasters,
    append,
    get_projection,
    read_all,
    run_command,
)
from celery_reliable.eventstore.commands import backoff_delay
from celery_reliable.eventstore.projection import forget_projection
from celery_reliable.eventstore.publish import subscriber_names

NO_SESSION: Any = None  # every check below fails before the session is touched


@pytest.mark.parametrize(
    ("expected", "error", "message"),
    [
        (-1, ValueError, "expected_version must be >= 0"),
        ("3", TypeError, "expected_version must be an int"),
        (1.0, TypeError, "expected_version must be an int"),
        (True, TypeError, "expected_version must be an int"),
        (None, TypeError, "expected_version must be an int"),
    ],
)
def test_bad_expected_version(expected: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        append(NO_SESSION, "s-1", [NewEvent("X")], expected_version=expected)


def test_bad_streams_and_events() -> None:
    with pytest.raises(ValueError, match="stream id"):
        append(NO_SESSION, "", [NewEvent("X")], expected_version=0)
    with pytest.raises(ValueError, match="stream id"):
        append(NO_SESSION, "x" * 256, [NewEvent("X")], expected_version=0)
    with pytest.raises(ValueError, match="at least one event"):
        append(NO_SESSION, "s-1", [], expected_version=ANY_VERSION)
    with pytest.raises(TypeError, match="NewEvent objects"):
        append(NO_SESSION, "s-1", [{"type": "X"}], expected_version=0)  # type: ignore[list-item]
    with pytest.raises(SerializationError, match=r"X data\['when'\]"):
        append(NO_SESSION, "s-1", [NewEvent("X", {"when": object()})], expected_version=0)
    with pytest.raises(SerializationError, match="finite"):
        append(NO_SESSION, "s-1", [NewEvent("X", {"v": float("nan")})], expected_version=0)
    with pytest.raises(TypeError, match="publish= takes tasks"):
        append(NO_SESSION, "s-1", [NewEvent("X")], expected_version=0, publish=[42])


def test_bad_new_events() -> None:
    with pytest.raises(ValueError, match="event type"):
        NewEvent("")
    with pytest.raises(TypeError, match="JSON object"):
        NewEvent("X", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema version"):
        NewEvent("X", {}, schema_version=0)
    with pytest.raises(ValueError, match="event_id"):
        NewEvent("X", {}, event_id="")


def test_bad_reads_and_commands() -> None:
    with pytest.raises(ValueError, match="after must be"):
        read_all(NO_SESSION, after=-1)
    with pytest.raises(ValueError, match="limit must be"):
        read_all(NO_SESSION, limit=0)
    with pytest.raises(ValueError, match="retries"):
        run_command(NO_SESSION, lambda s: None, retries=-1)
    with pytest.raises(TypeError, match="Engine or a sessionmaker"):
        run_command("postgresql://", lambda s: None)  # type: ignore[arg-type]


def test_subscribers() -> None:
    assert subscriber_names(None) == []
    assert subscriber_names("a.task") == ["a.task"]
    with pytest.raises(ValueError, match="twice"):
        subscriber_names(["a", "a"])


def test_conflict_carries_its_data() -> None:
    exc = ConcurrencyConflict("acct-1", 3, 5)
    assert (exc.stream_id, exc.expected_version, exc.actual_version) == ("acct-1", 3, 5)
    assert str(exc) == "stream 'acct-1' is at version 5, expected version 3; reload and try again"
    assert type(exc)(*exc.args).actual_version == 5  # rebuilt from args, as Celery does


def test_backoff_is_exponential_with_full_jitter() -> None:
    assert [backoff_delay(n, 0.1, 2.0, rng=lambda: 1.0) for n in (1, 2, 3, 6)] == [0.1, 0.2, 0.4, 2.0]
    rng = random.Random(1)
    assert all(0 <= backoff_delay(3, 0.1, 2.0, rng.random) <= 0.4 for _ in range(100))


def test_upcaster_chain_and_errors() -> None:
    ups = Upcasters()
    ups.add("T", 1, lambda d: {"b": d["a"]})
    ups.add("T", 2, lambda d: {**d, "c": 1})
    assert ups.upcast("T", 1, {"a": 5}) == (3, {"b": 5, "c": 1})
    assert ups.upcast("T", 3, {"x": 1}) == (3, {"x": 1})
    assert ups.upcast("U", 1, {"x": 1}) == (1, {"x": 1})
    with pytest.raises(ValueError, match="already registered"):
        ups.add("T", 1, lambda d: d)
    ups.add("V", 1, lambda d: [d])  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned list"):
        ups.upcast("V", 1, {})


def test_event_message_round_trip() -> None:
    event = RecordedEvent("s-1", 2, None, "e-1", "X", 1, {"a": [1]}, {"by": "me"}, None)
    assert RecordedEvent.from_message(event.as_message()) == event
    with pytest.raises(ValueError, match="not an event message"):
        RecordedEvent.from_message({"event_id": "e-1"})


def test_projection_registry() -> None:
    p = Projection("unit-test-projection")
    try:
        assert get_projection("unit-test-projection") is p
        with pytest.raises(ValueError, match="already defined"):
            Projection("unit-test-projection")

        @p.on("A")
        def handle(session: Any, event: RecordedEvent) -> None: ...

        with pytest.raises(ValueError, match="already handles"):
            p.on("A")
        assert p.event_types == ["A"]
    finally:
        forget_projection("unit-test-projection")
    with pytest.raises(LookupError, match="no projection named 'unit-test-projection'"):
        get_projection("unit-test-projection")


def test_migration_and_code_agree_on_the_position_lock() -> None:
    import importlib

    from celery_reliable.eventstore.position import POSITION_LOCK_ID

    migration = importlib.import_module("celery_reliable.migrations.versions.0008_event_store")
    assert migration.POSITION_LOCK_ID == POSITION_LOCK_ID
    assert str(POSITION_LOCK_ID) in migration._FUNCTION_SQL
    assert (migration.revision, migration.down_revision) == ("0008_event_store", "0007_http_idempotency")


def test_rebuild_needs_a_reset_function() -> None:
    from celery_reliable.eventstore import rebuild

    p = Projection("unit-test-no-reset")
    try:
        assert not p.has_reset
        with pytest.raises(ValueError, match="no reset function"):
            rebuild(NO_SESSION, p)
    finally:
        forget_projection("unit-test-no-reset")
