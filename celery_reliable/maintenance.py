"""Maintenance jobs run by beat: idempotency, inbox and HTTP-key cleanup, deferred-set pumping and sweeps,
dead-letter retention."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .deadletter.store import DeadLetterStore
from .deferred.pump import Pump
from .idempotency import db_store
from .runtime import runtime

if TYPE_CHECKING:
    from celery import Celery

CLEANUP_TASK = "celery_reliable.cleanup_idempotency"
PUMP_TASK = "celery_reliable.pump_deferred"
PURGE_DEAD_LETTERS_TASK = "celery_reliable.purge_dead_letters"
CLEANUP_INBOX_TASK = "celery_reliable.cleanup_inbox"
CLEANUP_HTTP_TASK = "celery_reliable.cleanup_http_idempotency"
RELAY_OUTBOX_TASK = "celery_reliable.relay_outbox"
CLEANUP_OUTBOX_TASK = "celery_reliable.cleanup_outbox"

logger = logging.getLogger(__name__)


def cleanup_idempotency(app: Celery) -> dict[str, int]:
    """Delete expired idempotency records in bounded batches."""
    rt = runtime(app)
    if not rt.has_database:
        return {"deleted": 0}
    return {"deleted": db_store.delete_expired(rt.engine(), rt.config.cleanup_batch)}


def cleanup_inbox(app: Celery) -> dict[str, int]:
    """Delete expired consumer-inbox rows in bounded batches."""
    from . import inbox

    rt = runtime(app)
    if not rt.has_database:
        return {"deleted": 0}
    return {"deleted": inbox.delete_expired(rt.engine(), rt.config.cleanup_batch)}


def cleanup_http_idempotency(app: Celery) -> dict[str, int]:
    """Delete expired HTTP idempotency keys in bounded batches (on ``reliable_database_url``)."""
    from .http import store

    rt = runtime(app)
    if not rt.has_database:
        return {"deleted": 0}
    return {"deleted": store.delete_expired(rt.engine(), rt.config.cleanup_batch)}


def pump_deferred(app: Celery, rounds: int = 10) -> dict[str, int]:
    """Move due deferred tasks (for deployments that pump from beat), sweep leases, re-warm."""
    rt = runtime(app)
    cfg = rt.config
    pump = Pump(app, rt.deferred(), interval=0, batch=cfg.pump_batch, lease_ms=cfg.pump_lease_ms)
    moved = 0
    for _ in range(rounds):
        n = pump.step()
        moved += n
        if n < cfg.pump_batch:
            break
    swept = rt.deferred().sweep()
    rt.warm_up()
    return {"moved": moved, "swept": swept}


def purge_dead_letters(app: Celery) -> dict[str, int]:
    """Delete dead letters older than ``reliable_dead_letter_retention`` in bounded batches, logging how many."""
    rt = runtime(app)
    if not rt.has_database:
        return {"deleted": 0}
    cfg = rt.config
    retention = timedelta(milliseconds=cfg.dead_letter_retention_ms)
    deleted = DeadLetterStore(rt.engine()).purge(retention, batch=cfg.dead_letter_batch)
    logger.info("celery-reliable: purged %d dead letter(s) older than %s", deleted, retention)
    return {"deleted": deleted}


def register(app: Celery) -> None:
    """Register the maintenance tasks on ``app`` (once)."""
    if CLEANUP_TASK in app.tasks:
        return

    @app.task(name=CLEANUP_TASK, ignore_result=True)
    def _cleanup() -> dict[str, int]:
        return cleanup_idempotency(app)

    @app.task(name=PUMP_TASK, ignore_result=True)
    def _pump() -> dict[str, int]:
        return pump_deferred(app)

    @app.task(name=PURGE_DEAD_LETTERS_TASK, ignore_result=True)
    def _purge_dead_letters() -> dict[str, int]:
        return purge_dead_letters(app)

    @app.task(name=CLEANUP_INBOX_TASK, ignore_result=True)
    def _cleanup_inbox() -> dict[str, int]:
        return cleanup_inbox(app)

    @app.task(name=CLEANUP_HTTP_TASK, ignore_result=True)
    def _cleanup_http() -> dict[str, int]:
        return cleanup_http_idempotency(app)

    @app.task(name=RELAY_OUTBOX_TASK, ignore_result=True)
    def _relay_outbox() -> dict[str, int]:
        from .outbox.relay import relay_outbox

        return relay_outbox(app)

    @app.task(name=CLEANUP_OUTBOX_TASK, ignore_result=True)
    def _cleanup_outbox() -> dict[str, int]:
        from .outbox.admin import cleanup_outbox

        return cleanup_outbox(app)

    from .saga.sweeper import register as register_saga_sweep

    register_saga_sweep(app)


def beat_schedule(app: Celery) -> dict[str, dict[str, Any]]:
    """The beat entries of the maintenance jobs, to merge into ``beat_schedule``.

    Reads only ``reliable_cleanup_interval``, ``reliable_outbox_interval`` and
    ``reliable_saga_sweep_interval``, so it can run before the other settings are set.
    """
    from .config import duration_ms
    from .defaults import SETTINGS_BY_NAME

    name = "reliable_cleanup_interval"
    cleanup_ms = duration_ms(name, app.conf.get(name, SETTINGS_BY_NAME[name].default))
    outbox = "reliable_outbox_interval"
    relay_s = max(duration_ms(outbox, app.conf.get(outbox, SETTINGS_BY_NAME[outbox].default)), 10) / 1000.0
    from .saga.sweeper import beat_entry as saga_sweep_entry

    return {
        **saga_sweep_entry(app),
        "celery-reliable-cleanup-idempotency": {
            "task": CLEANUP_TASK,
            "schedule": max(cleanup_ms, 1000) / 1000.0,
            "options": {"expires": 60},
        },
        "celery-reliable-cleanup-inbox": {
            "task": CLEANUP_INBOX_TASK,
            "schedule": max(cleanup_ms, 1000) / 1000.0,
            "options": {"expires": 60},
        },
        "celery-reliable-cleanup-http-idempotency": {
            "task": CLEANUP_HTTP_TASK,
            "schedule": max(cleanup_ms, 1000) / 1000.0,
            "options": {"expires": 60},
        },
        "celery-reliable-relay-outbox": {
            "task": RELAY_OUTBOX_TASK,
            "schedule": relay_s,
            "options": {"expires": max(5.0, 2 * relay_s)},
        },
        "celery-reliable-cleanup-outbox": {
            "task": CLEANUP_OUTBOX_TASK,
            "schedule": max(cleanup_ms, 1000) / 1000.0,
            "options": {"expires": 60},
        },
        "celery-reliable-pump-deferred": {
            "task": PUMP_TASK,
            "schedule": 5.0,
            "options": {"expires": 10},
        },
        "celery-reliable-purge-dead-letters": {
            "task": PURGE_DEAD_LETTERS_TASK,
            "schedule": 3600.0,
            "options": {"expires": 600},
        },
    }
