"""Wire celery-reliable into a Celery app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import signals

from .defaults import SETTINGS

if TYPE_CHECKING:
    from celery import Celery


def install_worker_step(app: Celery) -> None:
    """Register the settings' defaults, the worker bootstep and the JSON log switch (idempotent)."""
    if app.__dict__.get("_celery_reliable_step"):
        return
    from .bootstep import ReliableStep
    from .logs import connect as connect_logs
    from .malformed import MalformedMessages

    app.add_defaults({s.name: s.default for s in SETTINGS})
    connect_logs(app)  # reliable_log_json: JSON logs once the worker or beat sets up logging
    app.steps["worker"].add(ReliableStep)
    from .saga.sweeper import SagaSweeper

    app.steps["worker"].add(SagaSweeper)  # starts only where a saga is defined
    app.steps["consumer"].add(MalformedMessages)
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="celery_reliable.lock_on_revoked")
    app.__dict__["_celery_reliable_step"] = True


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """A terminated singleton body gives its lock back once its process is gone."""
    if terminated and request is not None and getattr(sender, "_reliable_lock", None) is not None:
        from .lock_guard import release_after_kill

        release_after_kill(sender, getattr(request, "args", ()), getattr(request, "kwargs", {}), "revoked")


def install(app: Celery, beat: bool = True) -> Celery:
    """Install celery-reliable on ``app``: settings, worker bootstep, maintenance tasks, beat.

    Args:
        app: the Celery app.
        beat: merge the maintenance jobs into ``app.conf.beat_schedule`` (entries the
            user already has under the same names are kept), and make
            :class:`~celery_reliable.beat_leader.LeaderScheduler` beat's scheduler unless
            the app names one (``beat_scheduler``, or ``celery beat -S``).

    Returns:
        ``app``, for chaining.
    """
    from . import maintenance

    install_worker_step(app)
    maintenance.register(app)
    if beat:
        _merge_beat(app)
        _default_scheduler(app)
    return app


def _merge_beat(app: Celery) -> None:
    from .maintenance import beat_schedule

    schedule = dict(app.conf.beat_schedule or {})
    for name, entry in beat_schedule(app).items():
        schedule.setdefault(name, entry)
    app.conf.beat_schedule = schedule


#: The scheduler ``install`` gives beat when the app names none.
LEADER_SCHEDULER = "celery_reliable.beat_leader:LeaderScheduler"


def _default_scheduler(app: Celery) -> None:
    """Make beat lead with a lease unless the user chose a scheduler (now, and after any reconfigure)."""

    def choose(**_: Any) -> None:
        if not app.conf.value_set_for("beat_scheduler"):
            app.conf.beat_scheduler = LEADER_SCHEDULER

    app.on_after_configure.connect(choose, weak=False, dispatch_uid=f"celery_reliable.beat_scheduler.{id(app)}")
    if app.configured:
        choose()
