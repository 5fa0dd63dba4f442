"""The global_rate_limit options of ReliableTask, checked when the task is declared."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from celery import Celery

from celery_reliable import BadLimit, ConfigurationError, ReliableTask, UnknownOptionError
from celery_reliable.config import parse
from celery_reliable.rate_option import RateLimit
from celery_reliable.ratelimit import Limit, Tiers


@pytest.fixture()
def app() -> Celery:
    return Celery("unit", broker="redis://127.0.0.1:6379/0", set_as_current=False)


_names = itertools.count()


def declare(app: Celery, **options: Any) -> Any:
    @app.task(shared=False, base=ReliableTask, name=f"api.call{next(_names)}", **options)
    def call(tenant_id: str, plan: str = "free", weight: int = 1) -> None:
        return None

    call.name  # noqa: B018  # Celery creates task classes lazily: the first use declares it
    return call


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"global_rate_limit": "20 a second"}, BadLimit, "cannot be read"),
        ({"global_rate_limit": "20/fortnight"}, BadLimit, "unknown period unit"),
        ({"global_rate_limit": 20}, BadLimit, "expected a str"),
        ({"global_rate_limit": {}}, ConfigurationError, "expected at least one tier"),
        ({"global_rate_limit": {"free": "10/m", "pro": "1000/m"}}, ConfigurationError, "nothing chooses one per call"),
        ({"global_rate_limit": {"free": "10/x"}, "rate_limit_tier": "{plan}"}, BadLimit, "tier 'free'"),
        ({"global_rate_limit": "10/s", "rate_limit_tier": "{plan}"}, ConfigurationError, "needs tiers"),
        ({"global_rate_limit": "10/s", "rate_limit_key": "t:{tenant}"}, ConfigurationError, "names 'tenant'"),
        ({"global_rate_limit": "10/s", "rate_limit_key": 7}, ConfigurationError, "rate_limit_key: expected a template"),
        ({"global_rate_limit": "10/s", "rate_limit_cost": 3}, ConfigurationError, "'10/s burst 3'"),
        ({"global_rate_limit": "10/s burst 2", "rate_limit_cost": 0}, ConfigurationError, "at least 1"),
        ({"global_rate_limit": "10/s", "rate_limit_on_publish": "yes"}, ConfigurationError, "True or False"),
        ({"rate_limit_key": "t:{tenant_id}"}, ConfigurationError, "has no effect without global_rate_limit"),
        ({"rate_limit_on_publish": True}, ConfigurationError, "has no effect without global_rate_limit"),
        (
            {"global_rate_limit": RateLimit("10/s"), "rate_limit_key": "t:{tenant_id}"},
            ConfigurationError,
            "clashes with global_rate_limit=RateLimit",
        ),
    ],
)
def test_wrong_rate_options_fail_at_declaration(
    app: Celery, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=None) as raised:
        declare(app, **options)
    assert message in str(raised.value)


def test_a_misspelt_option_names_the_right_one(app: Celery) -> None:
    with pytest.raises(UnknownOptionError, match="did you mean 'global_rate_limit'"):
        declare(app, global_rate_limits="10/s")


def test_a_limit_written_without_burst_is_smooth(app: Celery) -> None:
    spec = declare(app, global_rate_limit="20/s")._reliable_rate
    meter, key, limit, cost = spec.call("api.x", ("acme",), {})
    assert (meter, key, cost) == ("task", "api.x", 1)
    assert (limit.rate, limit.period_s, limit.burst) == (20, 1.0, 1)


def test_a_declared_burst_and_limit_objects_are_kept(app: Celery) -> None:
    assert declare(app, global_rate_limit="20/s burst 5")._reliable_rate.limits[""].burst == 5
    assert declare(app, global_rate_limit=Limit(20, 1.0))._reliable_rate.limits[""].burst == 20


def test_keys_tiers_and_costs_come_from_each_call(app: Celery) -> None:
    task = declare(
        app,
        global_rate_limit={"free": "10/m", "pro": "1000/m burst 50"},
        rate_limit_key="tenant:{tenant_id}",
        rate_limit_tier="{plan}",
        rate_limit_cost=lambda tenant_id, plan="free", weight=1: weight,
    )
    spec = task._reliable_rate
    assert spec.call(task.name, ("acme",), {"plan": "pro", "weight": 7})[:2] == ("task:pro", "tenant:acme")
    assert spec.call(task.name, ("acme",), {})[3] == 1
    with pytest.raises(ConfigurationError, match="unknown tier 'gold'"):
        spec.call(task.name, ("acme", "gold"), {})
    with pytest.raises(ConfigurationError, match="exceeds the burst of 10/m"):
        spec.call(task.name, ("acme", "free", 2), {})


def test_tiers_object_uses_its_default_tier(app: Celery) -> None:
    task = declare(app, global_rate_limit=Tiers({"free": "10/m", "pro": "1000/m"}, default="free"))
    assert task._reliable_rate.call(task.name, ("acme",), {})[0] == "task:free"


def test_the_full_form_holds_every_option(app: Celery) -> None:
    task = declare(app, global_rate_limit=RateLimit("5/s", key="{tenant_id}", on_publish=True))
    spec = task._reliable_rate
    assert spec.on_publish and spec.call(task.name, ("acme",), {})[1] == "acme"


@pytest.mark.parametrize(("value", "ok"), [("defer", True), ("allow", True), ("open", False), (None, False)])
def test_the_redis_error_setting_takes_defer_or_allow(value: Any, ok: bool) -> None:
    app = Celery("unit", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.reliable_rate_limit_on_redis_error = value
    if ok:
        assert parse(app).rate_limit_on_redis_error == value
    else:
        with pytest.raises(ConfigurationError, match="expected one of 'defer', 'allow'"):
            parse(app)


def _request(task_id: str, retries: int, booking: dict[str, Any] | None) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(id=task_id, retries=retries, headers={"reliable_rate_slot": booking} if booking else {})


def test_a_booking_counts_only_for_its_own_task_id_and_attempt() -> None:
    from celery_reliable.rate_guard import booking_of

    booking = {"id": "t-1", "retries": 0, "key": "k", "at_us": 1, "late_us": 50_000}
    assert booking_of(_request("t-1", 0, booking)) == booking
    assert booking_of(_request("t-1", 1, booking)) is None  # a retry books anew
    assert booking_of(_request("t-2", 0, booking)) is None  # a replayed dead letter gets a new id
    assert booking_of(_request("t-1", 0, None)) is None
    assert booking_of(_request("t-1", 0, {"retries": 0})) is None  # an old or forged header
