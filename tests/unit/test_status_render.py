"""Masking, error reasons and the status screen, without any backend."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from celery_reliable.status.health import Check
from celery_reliable.status.probe import guarded, masked, reason, secrets_of
from celery_reliable.status.render import render_text

DOWN = {"unavailable": "ConnectionError: refused"}


def test_masked_hides_passwords_of_urls_and_known_secrets() -> None:
    secrets = secrets_of(["redis://:p%40ss@h:6379/0", "amqp://u:hunter2@rabbit//", None, "sqlite:///x.db"])
    assert set(secrets) == {"p%40ss", "p@ss", "hunter2"}
    text = "cannot reach redis://:p%40ss@h:6379/0 (auth p@ss), amqp://u:hunter2@rabbit// and postgresql://a:b@db/x"
    shown = masked(text, secrets)
    assert shown == "cannot reach redis://:***@h:6379/0 (auth ***), amqp://u:***@rabbit// and postgresql://a:***@db/x"


def test_reason_is_one_masked_line_and_unwraps_sqlalchemy_errors() -> None:
    exc = OperationalError("SELECT 1", {}, ConnectionError("connection to server\n  at postgresql://u:pw@db failed"))
    assert reason(exc, ["pw"]) == "ConnectionError: connection to server at postgresql://u:***@db failed"
    assert len(reason(ValueError("x" * 1000))) == 300


def test_guarded_turns_an_error_into_unavailable() -> None:
    def boom() -> int:
        raise TimeoutError("Timeout reading from 10.0.0.1:6379")

    assert guarded(lambda: 3) == 3
    assert guarded(boom) == {"unavailable": "TimeoutError: Timeout reading from 10.0.0.1:6379"}


def test_screen_shows_unavailable_sections_and_values() -> None:
    report = {
        "redis": "redis://:***@h:6379/1",
        "database": "postgresql+psycopg://app:***@db/shop",
        "migrations": {"current": "0006_inbox", "head": "0007_http_idempotency"},
        "redis_warm": DOWN,
        "breakers": DOWN,
        "rate_limits": {},
        "bulkheads": {"critical": {"size": 50, "in_use": DOWN, "tasks": []}},
        "locks": DOWN,
        "deferred": DOWN,
        "queues": {"critical": 4, "standard": DOWN},
        "dead_letters": None,
        "outbox": {"pending": 2, "dead": 1, "lag_seconds": 3.25},
        "idempotency_records": 7,
    }
    lines = render_text(report)
    assert "migrations     0006_inbox (BEHIND: head is 0007_http_idempotency)" in lines
    assert "breakers       unavailable: ConnectionError: refused" in lines
    assert "rate limits    none" in lines
    assert "  critical               unavailable: ConnectionError: refused" in lines
    assert "  standard                           unavailable: ConnectionError: refused" in lines
    assert "dead letters   no table (run `celery -A proj reliable migrate`)" in lines
    assert "outbox         pending 2, dead 1, lag 3.2s" in lines
    assert "idempotency    7 records" in lines


def test_check_as_dict_rounds_seconds() -> None:
    assert Check("redis", True, "answers PING", 0.0123456).as_dict() == {
        "name": "redis",
        "ok": True,
        "detail": "answers PING",
        "seconds": 0.012,
    }
