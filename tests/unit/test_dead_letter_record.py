"""Dead-letter records, their encoding into columns, and the CLI's time parsing (no database)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from celery_reliable import deadletter
from celery_reliable.deadletter import DeadLetter, body_dedup_key, dedup_key_for, exception_fields, history_entry
from celery_reliable.deadletter.codec import bounded, encode_body, encode_json, from_row, to_values
from celery_reliable.deadletter.replay import replay_task_id
from celery_reliable.deadletter.timespec import parse_duration, parse_since
from celery_reliable.jsoncodec import loads

NOW = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc)


def test_public_surface_is_complete() -> None:
    assert len(set(deadletter.__all__)) == len(deadletter.__all__)
    assert all(hasattr(deadletter, name) for name in deadletter.__all__)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reason": "tired"}, "reason must be one of exhausted, permanent"),
        ({"dedup_key": ""}, "dedup_key must be a non-empty string"),
        ({"attempts": -1}, "attempts must be >= 0"),
    ],
)
def test_bad_records_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeadLetter(**{"dedup_key": "id-1", "reason": "exhausted", **fields})  # type: ignore[arg-type]


def test_dedup_keys_prefer_the_task_id_and_hash_the_body_otherwise() -> None:
    assert dedup_key_for("abc", b"whatever") == "abc"
    key = dedup_key_for(None, b"\xff\x00body")
    assert key == dedup_key_for("  ", b"\xff\x00body") == body_dedup_key(b"\xff\x00body")
    assert key.startswith("body:") and len(key) == 5 + 64
    assert body_dedup_key("é") == body_dedup_key("é".encode())
    with pytest.raises(ValueError, match="task id or the raw message body"):
        dedup_key_for(None, None)


def test_values_json_cannot_hold_are_wrapped_and_make_the_letter_not_replayable() -> None:
    text = encode_json([1, {2}, "x"])
    assert loads(text or "") == [1, {"__unserializable__": "{2}"}, "x"]
    assert loads(encode_json({"when": NOW, "n": 1}) or "") == {"when": {"__unserializable__": repr(NOW)}, "n": 1}
    assert loads(encode_json(object()) or "")["__unserializable__"].startswith("<object object")
    letter = DeadLetter("id-1", "exhausted", task_name="t", args=loads(text or ""), kwargs={})
    assert letter.why_not_replayable() == "some arguments could not be stored as JSON"
    assert DeadLetter("id-1", "exhausted", task_name="t", args=[1], kwargs={}).why_not_replayable() is None


@pytest.mark.parametrize(
    ("letter", "why"),
    [
        (DeadLetter("body:x", "undeserializable", raw_body="??"), "no task name"),
        (DeadLetter("i", "undeserializable", task_name="t", raw_body="??"), "could not be deserialized"),
        (DeadLetter("i", "bad_arguments", task_name="t", args={"a": 1}), "not a list and a mapping"),
        (DeadLetter("i", "permanent", task_name="t", args=[], replayable=False), "marked not replayable"),
    ],
)
def test_why_a_letter_cannot_be_replayed(letter: DeadLetter, why: str) -> None:
    assert why in (letter.why_not_replayable() or "")


def test_bodies_that_are_not_clean_utf8_are_stored_as_base64() -> None:
    assert encode_body(b'{"ok": 1}') == ('{"ok": 1}', "utf-8")
    assert encode_body("é") == ("é", "utf-8")
    for raw in (b"\xff\xfe", b"nul\x00inside"):
        text, encoding = encode_body(raw)
        assert encoding == "base64" and base64.b64decode(text or "") == raw


def test_text_is_cleaned_and_long_names_are_cut_with_a_hash() -> None:
    values = to_values(
        DeadLetter("k" * 600, "poison", task_id="t" * 300, exception_message="a\x00b\udcff", args=("x",)), NOW
    )
    assert values["exception_message"] == "a\\x00b\\udcff"
    assert len(values["dedup_key"]) == 512 and len(values["task_id"]) == 255
    assert bounded("k" * 600, 512) == values["dedup_key"] != bounded("k" * 599 + "j", 512)
    assert values["args"] == '["x"]' and values["created_at"] == values["first_failed_at"] == NOW
    assert loads(encode_json(["\udcff"]) or "") == ["\udcff"]  # lone surrogates survive as JSON escapes


def test_a_row_reads_back_as_the_same_letter() -> None:
    history = [history_entry(1, "ValueError", "bad", at=NOW.astimezone(timezone(timedelta(hours=2))))]
    letter = DeadLetter("id-1", "exhausted", queue="q", task_id="id-1", task_name="t", args=[1], kwargs={"a": 2},
                        headers={"h": "v"}, attempts=1, history=history, first_failed_at=NOW)  # fmt: skip
    assert history[0]["at"] == "2026-11-05T12:00:00+00:00"
    row = SimpleNamespace(id=7, **to_values(letter, NOW + timedelta(seconds=1)))
    row.created_at = row.created_at.replace(tzinfo=None)  # as SQLite returns it
    back = from_row(row)
    assert back.id == 7 and back.args == [1] and back.kwargs == {"a": 2} and back.history == tuple(history)
    assert back.created_at == NOW + timedelta(seconds=1) and back.replayable is True
    assert back.last_failed_at == NOW + timedelta(seconds=1)


def test_exception_fields_name_the_class_and_keep_the_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        fields = exception_fields(exc)
    assert fields["exception_type"] == "KeyError" and fields["exception_message"] == "'missing'"
    assert "raise KeyError" in fields["traceback"]
    assert exception_fields(deadletter.DeadLetterNotFound(3))["exception_type"].endswith("record.DeadLetterNotFound")


def test_replay_task_ids_are_deterministic_per_letter_and_replay() -> None:
    letter = DeadLetter("id-1", "exhausted", id=5)
    assert replay_task_id(letter, 0) == replay_task_id(DeadLetter("id-1", "poison", id=5), 0)
    other = DeadLetter("x", "poison", id=5)
    assert len({replay_task_id(letter, 0), replay_task_id(letter, 1), replay_task_id(other, 0)}) == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("15m", 900), ("1h30m", 5400), ("7d", 604_800), ("2w", 1_209_600), (" 1.5H ", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30x", "-5", "d", "nan", "inf", "1h-2m"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_since_takes_a_duration_ago_or_an_iso_date() -> None:
    assert parse_since("1h", now=NOW) == NOW - timedelta(hours=1)
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_since("2026-11-01T12:00Z") == datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    assert parse_since("2026-11-01T12:00+02:00") == datetime(2026, 11, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")
