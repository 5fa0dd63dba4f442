"""The aggregate base class without a database: apply methods, pending events, versions, snapshots."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from celery_reliable.errors import SerializationError
from celery_reliable.eventstore import Aggregate, RecordedEvent, UnknownEventType, applies


class Counter(Aggregate):
    event_schema_versions = {"Added": 2}

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.total = 0

    @applies("Added", "AddedTwice")
    def _added(self, data: dict[str, Any]) -> None:
        self.total += data["n"]

    def apply_Reset(self, data: dict[str, Any]) -> None:
        self.total = 0


def recorded(version: int, type_: str, data: dict[str, Any], stream: str = "c-1") -> RecordedEvent:
    return RecordedEvent(stream, version, version, f"e{version}", type_, 1, data, {}, datetime.now(timezone.utc))


def test_record_applies_and_keeps_pending() -> None:
    c = Counter("c-1")
    c.record("Added", {"n": 2})
    c.record("AddedTwice", {"n": 3})
    c.record("Reset")
    c.record("Added", {"n": 4})
    assert (c.total, c.version, c.loaded_version) == (4, 4, 0)
    assert [e.type for e in c.pending_events] == ["Added", "AddedTwice", "Reset", "Added"]
    assert c.pending_events[0].schema_version == 2 and c.pending_events[1].schema_version == 1
    saved = c.mark_saved()
    assert len(saved) == 4 and c.pending_events == [] and c.loaded_version == 4


def test_replay_rebuilds_state_and_version() -> None:
    c = Counter("c-1")
    c.replay([recorded(1, "Added", {"n": 5}), recorded(2, "Added", {"n": 6})])
    assert (c.total, c.version, c.loaded_version) == (11, 2, 2)


def test_unknown_event_type_is_refused_without_applying() -> None:
    c = Counter("c-1")
    with pytest.raises(UnknownEventType, match="Counter has no apply method for event type 'Removed'"):
        c.record("Removed", {"n": 1})
    assert (c.version, c.pending_events) == (0, [])
    with pytest.raises(UnknownEventType):
        Counter("c-1").replay([recorded(1, "Removed", {})])


def test_non_json_data_is_refused_at_record() -> None:
    c = Counter("c-1")
    with pytest.raises(SerializationError, match="Added data"):
        c.record("Added", {"n": 1, "when": datetime.now()})
    assert c.version == 0 and c.total == 0


def test_replay_checks_order_and_stream() -> None:
    with pytest.raises(ValueError, match="follows version 0"):
        Counter("c-1").replay([recorded(2, "Added", {"n": 1})])
    with pytest.raises(ValueError, match="belongs to stream"):
        Counter("c-1").replay([recorded(1, "Added", {"n": 1}, stream="c-2")])
    c = Counter("c-1")
    c.record("Added", {"n": 1})
    with pytest.raises(ValueError, match="pending events"):
        c.replay([recorded(1, "Added", {"n": 1})])


def test_snapshot_round_trip() -> None:
    c = Counter("c-1")
    c.record("Added", {"n": 7})
    state = c.snapshot_state()
    assert state == {"total": 7}
    back = Counter.from_snapshot("c-1", 1, state)
    assert (back.total, back.version, back.loaded_version) == (7, 1, 1)
    assert Counter.aggregate_type == "Counter"


def test_bad_class_options_fail_at_declaration() -> None:
    with pytest.raises(ValueError, match="snapshot_every"):

        class Bad(Aggregate):
            snapshot_every = 0

    with pytest.raises(ValueError, match="schema version"):

        class Bad2(Aggregate):
            event_schema_versions = {"X": 0}

    with pytest.raises(ValueError, match="event type"):
        applies("")
    with pytest.raises(ValueError, match="stream id"):
        Counter("")
