"""install() makes the leader scheduler beat's default, and only the default."""

from __future__ import annotations

from celery import Celery

import celery_reliable
from celery_reliable.install import LEADER_SCHEDULER

BROKER = "redis://127.0.0.1:6379/9"


def test_install_picks_the_leader_scheduler_when_none_is_chosen() -> None:
    app = Celery("a", broker=BROKER, set_as_current=False)
    celery_reliable.install(app)
    assert app.conf.beat_scheduler == LEADER_SCHEDULER == "celery_reliable.beat_leader:LeaderScheduler"


def test_a_scheduler_the_user_chose_is_kept() -> None:
    class Config:
        beat_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"

    direct = Celery("b", broker=BROKER, set_as_current=False)
    direct.conf.beat_scheduler = "celery.beat:PersistentScheduler"
    celery_reliable.install(direct)
    assert direct.conf.beat_scheduler == "celery.beat:PersistentScheduler"

    before = Celery("c", broker=BROKER, set_as_current=False)
    before.config_from_object(Config)
    celery_reliable.install(before)
    assert before.conf.beat_scheduler == Config.beat_scheduler

    after = Celery("d", broker=BROKER, set_as_current=False)
    celery_reliable.install(after)
    after.config_from_object(Config, force=True)
    assert after.conf.beat_scheduler == Config.beat_scheduler


def test_install_without_beat_leaves_the_scheduler_alone() -> None:
    app = Celery("e", broker=BROKER, set_as_current=False)
    celery_reliable.install(app, beat=False)
    assert app.conf.beat_scheduler == "celery.beat:PersistentScheduler"
