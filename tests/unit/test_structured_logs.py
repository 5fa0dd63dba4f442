"""Structured decision logs and the JSON formatter (no services needed)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery._state import _task_stack

from celery_reliable import ConfigurationError, ReliableTask
from celery_reliable.config import get_config
from celery_reliable.events import emit
from celery_reliable.logs import FIELD, JsonFormatter, connect, log_decision, log_decision_for, redact


@pytest.fixture()
def app() -> Celery:
    app = Celery("unit", broker="memory://", set_as_current=False)
    app.conf.reliable_redis_url = "redis://127.0.0.1:6379/0"
    return app


class Capture(logging.Handler):
    """Keeps the records of the ``celery_reliable`` logger, and their JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture()
def captured() -> Iterator[Capture]:
    logger = logging.getLogger("celery_reliable")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("celery_reliable", logging.INFO, __file__, 1, msg, args or None, None)
    record.__dict__.update(extra)
    return record


def test_formatter_renders_one_json_object_per_line() -> None:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "two\nlines %s", ("here",), sys.exc_info())
    line = JsonFormatter(static={"service": "shop"}).format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "two\nlines here" and obj["level"] == "ERROR" and obj["logger"] == "x.y"
    assert obj["service"] == "shop" and obj["ts"].endswith("Z") and isinstance(obj["pid"], int)
    assert "ValueError: first line" in obj["exc_info"]


def test_formatter_keeps_extra_fields_as_objects() -> None:
    record = _record("decided", reliable={"decision": "deferred", "delay_ms": 120}, breaker={"name": "stripe"})
    obj = json.loads(JsonFormatter().format(record))
    assert obj["reliable"] == {"decision": "deferred", "delay_ms": 120}
    assert obj["breaker"] == {"name": "stripe"}


def test_passwords_in_urls_are_masked_everywhere() -> None:
    assert redact("redis://:s3cret@cache:6379/0 and postgresql+psycopg://app:pw@db/shop") == (
        "redis://:***@cache:6379/0 and postgresql+psycopg://app:***@db/shop"
    )
    assert redact("redis://cache:6379/0 user@example.com a:b") == "redis://cache:6379/0 user@example.com a:b"
    record = _record("cannot reach %s", "amqp://guest:hunter2@mq//", reliable={"url": "redis://u:hunter2@r/1"})
    line = JsonFormatter().format(record)
    assert "hunter2" not in line and "amqp://guest:***@mq//" in line


def test_task_arguments_in_extra_values_are_left_out() -> None:
    data = {"id": "t-1", "name": "shop.charge", "args": "('4242-SECRET',)", "kwargs": "{'cvc': '123'}", "runtime": 0.1}
    line = JsonFormatter().format(_record("Task shop.charge[t-1] succeeded", data=data))
    assert json.loads(line)["data"] == {"id": "t-1", "name": "shop.charge", "runtime": 0.1}
    shown = json.loads(JsonFormatter(show_arguments=True).format(_record("x", data=data)))
    assert shown["data"]["args"] == "('4242-SECRET',)"


def test_a_decision_carries_task_id_key_and_fields(captured: Capture) -> None:
    log_decision_for("shop.charge", "t-1", "deferred", "shop.charge||charge:7", {"reason": "locked", "delay_ms": 40})
    record = captured.records[-1]
    assert getattr(record, FIELD) == {
        "decision": "deferred",
        "task": "shop.charge",
        "task_id": "t-1",
        "idempotency_key": "shop.charge||charge:7",
        "reason": "locked",
        "delay_ms": 40,
    }
    assert (
        record.getMessage()
        == "deferred shop.charge[t-1] reason=locked delay_ms=40 idempotency_key=shop.charge||charge:7"
    )
    obj = captured.objects()[-1]
    assert (obj["task_id"], obj["task_name"], obj["idempotency_key"]) == ("t-1", "shop.charge", "shop.charge||charge:7")
    assert obj["reliable"]["decision"] == "deferred"


def test_emit_logs_the_event_with_the_key_and_never_the_arguments(app: Celery, captured: Capture) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True, idempotency_key="charge:{order_id}")
    def charge(self: ReliableTask, order_id: str, card_number: str) -> None:
        return None

    charge.push_request(id="t-9", args=("o-42",), kwargs={"card_number": "4242-4242-SECRET"})
    try:
        emit(charge, "task-deferred", False, reason="key-in-progress", delay_ms=300)
        emit(charge, "task-dead-lettered", False, log_level=logging.ERROR, log_fields={"stored": "new"}, reason="x")
    finally:
        charge.pop_request()
    deferred, dead = captured.objects()[-2:]
    assert deferred["reliable"] == {
        "decision": "deferred",
        "event": "task-deferred",
        "task": charge.name,
        "task_id": "t-9",
        "idempotency_key": f"{charge.name}||charge:o-42",
        "reason": "key-in-progress",
        "delay_ms": 300,
    }
    assert deferred["message"].startswith(f"task-deferred {charge.name}[t-9] reason=key-in-progress")
    assert dead["level"] == "ERROR" and dead["reliable"]["stored"] == "new"
    assert dead["reliable"]["decision"] == "dead-lettered"
    assert not any("SECRET" in line for line in captured.lines)


def test_a_task_without_key_logs_none(app: Celery, captured: Capture) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True)
    def plain(self: ReliableTask) -> None:
        return None

    plain.push_request(id="t-2", args=(), kwargs={})
    try:
        log_decision(plain, "lock-skipped", {"lock": "report:1"})
    finally:
        plain.pop_request()
    obj = captured.objects()[-1]
    assert "idempotency_key" not in obj["reliable"] and "idempotency_key" not in obj
    assert obj["task_id"] == "t-2"


def test_any_line_inside_a_task_carries_its_id_and_key(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True)
    def work(self: ReliableTask) -> None:
        return None

    work.push_request(id="t-3", idempotency_key="work||k")
    _task_stack.push(work)
    try:
        obj = json.loads(JsonFormatter().format(_record("hello from the body")))
    finally:
        _task_stack.pop()
        work.pop_request()
    assert (obj["task_id"], obj["task_name"], obj["idempotency_key"]) == ("t-3", work.name, "work||k")
    outside = json.loads(JsonFormatter().format(_record("between tasks")))
    assert "task_id" not in outside


def test_log_json_setting_is_a_checked_bool(app: Celery) -> None:
    assert get_config(app).log_json is False
    app.conf.reliable_log_json = "yes"
    app.__dict__.pop("_celery_reliable_config", None)
    with pytest.raises(ConfigurationError, match="reliable_log_json"):
        get_config(app)


@pytest.mark.parametrize("enabled", [True, False])
def test_worker_logging_setup_switches_to_json_when_set(app: Celery, enabled: bool) -> None:
    app.conf.reliable_log_json = enabled
    connect(app)
    target = logging.getLogger(f"unit-json-{enabled}")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    target.addHandler(handler)
    try:
        signals.after_setup_logger.send(sender=None, logger=target, loglevel=logging.INFO, logfile=None)
        target.warning("ready")
    finally:
        target.removeHandler(handler)
        signals.after_setup_logger.disconnect(dispatch_uid=f"celery_reliable.logs.{id(app)}")
        signals.after_setup_task_logger.disconnect(dispatch_uid=f"celery_reliable.logs.{id(app)}.task")
    assert isinstance(handler.formatter, JsonFormatter) is enabled
    if enabled:
        assert json.loads(stream.getvalue())["message"] == "ready"
    else:
        assert stream.getvalue() == "ready\n"
