"""Declaring sagas and steps: what is accepted, and the errors for what is not (no broker needed)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from celery_reliable import RetryPolicy, SerializationError, UnknownOptionError
from celery_reliable.saga import DEFAULT_TIMEOUT, Saga, SagaDefinitionError, Step, get_saga
from celery_reliable.saga.step import DEFAULT_COMPENSATION_POLICY


def _app() -> Celery:
    return Celery(f"saga-unit-{uuid.uuid4().hex[:6]}", set_as_current=False)


def _name() -> str:
    return f"unit_{uuid.uuid4().hex[:10]}"


def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"booking": 1}


def cancel(ctx: dict[str, Any]) -> None:
    return None


def charge(ctx: dict[str, Any]) -> None:
    return None


def notify(ctx: dict[str, Any]) -> None:
    return None


def test_a_saga_registers_one_task_per_step_and_per_compensation() -> None:
    app, name = _app(), _name()
    saga = Saga(name, steps=[Step(reserve, compensate=cancel), Step(charge, queue="payments"), notify], app=app)

    assert [s.name for s in saga.steps] == ["reserve", "charge", "notify"]
    assert saga.timeout_ms == DEFAULT_TIMEOUT.total_seconds() * 1000 == 7_200_000
    assert get_saga(name) is saga
    names = sorted(n for n in app.tasks if n.startswith("saga."))
    assert names == sorted(
        [f"saga.{name}.reserve", f"saga.{name}.reserve.compensate", f"saga.{name}.charge", f"saga.{name}.notify"]
    )
    step = app.tasks[f"saga.{name}.charge"]
    assert step.queue == "payments" and step.serializer == "json"
    assert step._reliable_spec.scoped(step.name, (), {"saga_id": "s-1", "index": 1}).endswith("saga:s-1:1:do")
    assert app.tasks[f"saga.{name}.reserve.compensate"].retry_policy == DEFAULT_COMPENSATION_POLICY


def test_compensations_run_from_the_last_compensable_step_below() -> None:
    saga = Saga(
        _name(),
        steps=[Step(reserve, compensate=cancel), Step(charge), Step(notify, compensate=cancel)],
        app=_app(),
    )
    assert [saga.compensable_below(i) for i in range(4)] == [None, 0, 0, 2]


def test_timeout_and_step_options_are_taken_as_given() -> None:
    app = _app()
    policy = RetryPolicy(max_attempts=3)
    saga = Saga(
        _name(),
        steps=[
            Step(
                reserve,
                compensate=cancel,
                lease=timedelta(seconds=5),
                retry_policy=policy,
                compensate_options={"queue": "undo"},
            )
        ],
        timeout=timedelta(minutes=30),
        app=app,
    )
    assert saga.timeout_ms == 1_800_000 and saga.steps[0].lease_ms == 5000
    assert app.tasks[saga.task_name(0)].retry_policy == policy
    assert app.tasks[saga.task_name(0, "compensate")].queue == "undo"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Step("reserve_hotel"), "a step's action must be callable, got 'reserve_hotel'"),
        (lambda: Step(reserve, compensate=42), "the compensation must be callable or None, got 42"),
        (lambda: Step(lambda ctx: None), "bad step name '<lambda>': pass name="),
        (lambda: Step(reserve, name="has space"), "bad step name 'has space'"),
        (lambda: Step(reserve, lease=0.1), "lease must be at least 0.5 s"),
        (lambda: Step(reserve, lease="30s"), "expected seconds"),
        (lambda: Step(reserve, idempotency_key="x"), "option(s) idempotency_key are set by the saga"),
        (lambda: Step(reserve, serializer="pickle"), "option(s) serializer are set by the saga"),
        (lambda: Step(reserve, compensate=cancel, compensate_options={"name": "x"}), "option(s) name are set"),
    ],
)
def test_bad_steps_fail_with_a_message_naming_the_problem(make: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("name", "steps", "timeout", "message"),
    [
        ("ok_name", [], 60, "needs a non-empty list of steps"),
        ("ok_name", "reserve", 60, "needs a non-empty list of steps"),
        ("ok_name", [reserve, 7], 60, "step 1 must be a Step or a callable, got 7"),
        ("ok_name", [Step(reserve), Step(charge, name="reserve")], 60, "duplicate step name(s) 'reserve'"),
        ("bad name", [reserve], 60, "bad saga name 'bad name'"),
        ("ok_name", [reserve], 0, "timeout must be a positive duration, got 0"),
        ("ok_name", [reserve], "2h", "expected seconds (int or float) or a timedelta, got '2h'"),
    ],
)
def test_bad_sagas_fail_with_a_message_naming_the_problem(name: str, steps: Any, timeout: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError) as info:
        Saga(name if name != "ok_name" else _name(), steps=steps, timeout=timeout, app=_app())
    assert message in str(info.value)


def test_a_saga_name_is_defined_once_per_process() -> None:
    name = _name()
    Saga(name, steps=[reserve], app=_app())
    with pytest.raises(SagaDefinitionError, match="already defined"):
        Saga(name, steps=[reserve], app=_app())


def test_a_wrong_task_option_fails_at_declaration_and_leaves_the_name_free() -> None:
    name = _name()
    with pytest.raises(UnknownOptionError, match="retry_policy"):
        Saga(name, steps=[Step(reserve, retry_polcy=RetryPolicy())], app=_app())
    assert get_saga(name) is None
    Saga(name, steps=[reserve], app=_app())


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (["not", "a", "dict"], TypeError, "the payload must be a dict, got list"),
        ({1: "x"}, TypeError, "payload keys must be str, got 1"),
        ({"when": {1, 2}}, SerializationError, "['when'] holds a value of type set"),
        ({"x": float("nan")}, SerializationError, "['x']"),
    ],
)
def test_a_payload_json_cannot_hold_is_refused_before_anything_is_written(
    payload: Any, error: type[Exception], message: str
) -> None:
    saga = Saga(_name(), steps=[reserve], app=_app())  # no database configured: nothing could be written
    with pytest.raises(error) as info:
        saga.start(_app(), payload)
    assert message in str(info.value)


def test_a_bad_saga_id_is_refused() -> None:
    saga = Saga(_name(), steps=[reserve], app=_app())
    with pytest.raises(ValueError, match="saga_id must be a printable str"):
        saga.start(_app(), {}, saga_id="")


def test_steps_cannot_commit_on_exit() -> None:
    app = _app()
    saga = Saga(_name(), steps=[reserve], app=app)
    with pytest.raises(SagaDefinitionError, match="commit_on_exit is not allowed"):
        app.tasks[saga.task_name(0)].transaction(commit_on_exit=True)
