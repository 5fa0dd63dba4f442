"""The lock options of ReliableTask, checked when the task is declared."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ConfigurationError, LockError, ReliableTask, UnknownOptionError
from celery_reliable.config import parse
from celery_reliable.locks.task_lock import check_backends


@pytest.fixture()
def app() -> Celery:
    return Celery("unit", broker="redis://127.0.0.1:6379/0", set_as_current=False)


_names = itertools.count()


def declare(app: Celery, **options: Any) -> Any:
    @app.task(shared=False, base=ReliableTask, name=f"reports.report{next(_names)}", **options)
    def report(day: str, region: str = "eu") -> None:
        return None

    report.name  # noqa: B018  # Celery creates task classes lazily: the first use declares it
    return report


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"singleton": "yes"}, "singleton: expected True or False"),
        ({"lock_key": 5}, "lock_key: expected a template string or a callable"),
        ({"lock_key": True}, "lock_key: expected a template string or a callable"),
        ({"lock_key": "report:{month}"}, "lock_key: template 'report:{month}' names 'month'"),
        ({"singleton": True, "lock_ttl": 0}, "lock_ttl: must be a positive number of seconds"),
        ({"singleton": True, "lock_ttl": -3}, "lock_ttl: must be a positive number of seconds"),
        ({"singleton": True, "lock_ttl": "30"}, "lock_ttl: expected seconds"),
        ({"singleton": True, "lock_ttl": 0.05}, "lock_ttl: must be at least 0.1 s"),
        ({"singleton": True, "lock_backend": "zookeeper"}, "lock_backend: expected one of 'redis', 'redlock'"),
        ({"singleton": True, "on_locked": "later"}, "on_locked: expected one of 'defer', 'skip', 'fail'"),
        ({"lock_ttl": 30}, "lock_ttl: has no effect without singleton=True or lock_key"),
        ({"on_locked": "skip"}, "on_locked: has no effect without singleton=True or lock_key"),
    ],
)
def test_wrong_lock_options_fail_at_declaration(app: Celery, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace("{", r"\{")):
        declare(app, **options)


def test_a_typo_in_a_lock_option_gets_a_suggestion(app: Celery) -> None:
    with pytest.raises(UnknownOptionError, match="did you mean 'lock_ttl'"):
        declare(app, lock_tll=3)


def test_lock_names_from_options(app: Celery) -> None:
    task = declare(app, singleton=True)
    assert task._reliable_lock.name(task.name, ("2026-11-23",), {}) == task.name
    keyed = declare(app, lock_key="report:{region}:{day}", lock_ttl=12, on_locked="skip")
    spec = keyed._reliable_lock
    assert spec.name(keyed.name, ("2026-11-23",), {}) == "report:eu:2026-11-23"
    assert spec.name(keyed.name, (), {"day": "ü日", "region": "東京"}) == "report:東京:ü日"
    assert (spec.ttl_ms, spec.on_locked, spec.backend) == (12000, "skip", None)
    long_name = spec.name(keyed.name, ("x" * 5000,), {})
    assert long_name.startswith(keyed.name[:120] + "#") and len(long_name) < 200  # hashed, not refused
    assert spec.name(keyed.name, ("a\x00b",), {}).count("#") == 1
    with pytest.raises(LockError, match=r"lock_key 'report:{region}:{day}'.*missing a required argument: 'day'"):
        spec.name(keyed.name, (), {"region": "eu"})
    assert declare(app)._reliable_lock is None


def test_backends_without_their_settings_are_named(app: Celery) -> None:
    redlocked = declare(app, singleton=True, lock_backend="redlock")
    expected = r"reliable_redlock_urls: task reports\.report\d+ locks with lock_backend='redlock'"
    with pytest.raises(ConfigurationError, match=expected):
        check_backends({redlocked.name: redlocked}, parse(app))
    app.conf.reliable_redlock_urls = ["redis://127.0.0.1:6379/0"] * 3
    check_backends({redlocked.name: redlocked}, parse(app))
    app.conf.reliable_redlock_urls = "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigurationError, match="reliable_redlock_urls: expected a list of strings"):
        parse(app)
