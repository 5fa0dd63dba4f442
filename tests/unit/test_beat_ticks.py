"""Tick identity of beat entries: the instant an entry fell due, on its own schedule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule

from celery_reliable.beat_leader import from_ms, next_instant, tick_for, to_ms

UTC = timezone.utc


@pytest.fixture(scope="module")
def app() -> Celery:
    return Celery("ticks", set_as_current=False, enable_utc=True, timezone="UTC")


def at(hms: str, day: int = 1, us: int = 0) -> datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return datetime(2030, 1, day, h, m, s, us, tzinfo=UTC)


def test_ms_round_trip_and_naive_is_utc() -> None:
    when = at("10:00:00", us=123_456)
    assert to_ms(when) == to_ms(when.replace(tzinfo=None))
    assert from_ms(to_ms(when)) == at("10:00:00", us=123_000)
    assert from_ms(to_ms(when), timezone(timedelta(hours=2))) == when.replace(microsecond=123_000)


def test_interval_tick_is_on_the_grid_of_the_last_run(app: Celery) -> None:
    every = schedule(timedelta(seconds=1), app=app)
    last = at("10:00:00", us=250_000)
    assert next_instant(every, last) == at("10:00:01", us=250_000)
    assert tick_for(every, last, at("10:00:01", us=900_000)) == at("10:00:01", us=250_000)


def test_interval_missed_ticks_collapse_into_the_newest_due(app: Celery) -> None:
    every = schedule(timedelta(seconds=10), app=app)
    last = at("10:00:00")
    assert tick_for(every, last, at("10:01:05")) == at("10:01:00")
    assert tick_for(every, last, at("10:01:00")) == at("10:01:00")  # an instant equal to now is due


def test_tick_is_cut_to_whole_milliseconds(app: Celery) -> None:
    every = schedule(timedelta(seconds=1), app=app)
    tick = tick_for(every, at("10:00:00", us=123_456), at("10:00:02"))
    assert tick == at("10:00:01", us=123_000)
    assert from_ms(to_ms(tick)) == tick


def test_crontab_tick_is_the_newest_cron_instant_not_after_now(app: Celery) -> None:
    quarter = crontab(minute="*/15", app=app)
    assert next_instant(quarter, at("10:00:00")) == at("10:15:00")
    assert next_instant(quarter, at("10:03:30")) == at("10:15:00")
    assert tick_for(quarter, at("10:00:00"), at("10:47:10")) == at("10:45:00")
    nightly = crontab(hour=2, minute=15, app=app)
    assert tick_for(nightly, at("02:15:00", day=1), at("03:00:00", day=4)) == at("02:15:00", day=4)


def test_not_yet_due_or_unknown_schedule_ticks_at_now(app: Celery) -> None:
    quarter = crontab(minute="*/15", app=app)
    now = at("10:05:00", us=777_777)
    assert tick_for(quarter, at("10:00:00"), now) == at("10:05:00", us=777_000)
    custom = BaseSchedule(app=app)  # solar or a user's own schedule: no instants to name
    assert next_instant(custom, at("10:00:00")) is None
    assert tick_for(custom, at("10:00:00"), now) == at("10:05:00", us=777_000)


def test_relative_interval_ticks_move_forward(app: Celery) -> None:
    minutely = schedule(timedelta(minutes=1), relative=True, app=app)
    last = at("10:00:20")
    first = next_instant(minutely, last)
    assert first is not None and first > last
    tick = tick_for(minutely, last, at("10:05:30"))
    assert last < tick <= at("10:05:30")
