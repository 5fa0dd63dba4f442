"""Gather everything ``celery -A proj reliable status`` shows, section by section.

Every section is read on its own and survives its backend being down: it then reads
``{"unavailable": <reason>}``. Redis is asked once for a ``PING`` first, so a dead Redis
costs one short timeout, not one per breaker, bulkhead and meter.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..idempotency.redis_store import RedisIdempotency
from ..scripts import Scripts
from . import guards, parking, queues
from .database import sections as database_sections
from .probe import guarded, masked, quick_engine, quick_redis, reason, secrets_of

if TYPE_CHECKING:
    from celery import Celery

    from ..config import ReliableConfig

#: The sections that live in Redis, in the order they are shown.
REDIS_SECTIONS = ("breakers", "rate_limits", "bulkheads", "locks", "deferred")


def app_secrets(app: Celery, cfg: ReliableConfig) -> tuple[str, ...]:
    """The passwords in every URL the app's settings name (masked wherever they would show)."""
    conf = app.conf
    urls = [cfg.redis_url, cfg.database_url, conf.broker_url, conf.result_backend, *cfg.redlock_urls]
    return secrets_of(urls)


def _redis_sections(app: Celery, cfg: ReliableConfig, secrets: tuple[str, ...]) -> dict[str, Any]:
    client = quick_redis(cfg.redis_url)
    try:
        try:
            client.ping()
        except Exception as exc:
            down = {"unavailable": reason(exc, secrets)}
            return {"redis_warm": down, **dict.fromkeys(REDIS_SECTIONS, down)}
        tasks = dict(app.tasks)
        prefix = cfg.key_prefix
        return {
            "redis_warm": guarded(RedisIdempotency(client, Scripts(client), prefix).is_warm, secrets)
            if cfg.database_url
            else None,
            "breakers": guarded(lambda: guards.breakers(tasks, cfg, client, secrets), secrets),
            "rate_limits": guarded(lambda: guards.rate_limits(tasks, cfg, client, secrets), secrets),
            "bulkheads": guarded(lambda: guards.bulkheads(tasks, cfg, client, secrets), secrets),
            "locks": guarded(lambda: parking.held_locks(client, prefix), secrets),
            "deferred": guarded(lambda: parking.deferred(client, prefix), secrets),
        }
    finally:
        with contextlib.suppress(Exception):
            client.close()


def gather(app: Celery, cfg: ReliableConfig) -> dict[str, Any]:
    """The whole report: one key per section (see :func:`~.render.render_text` for the screen).

    Keys: ``redis``, ``database`` (masked URLs), ``redis_warm``, ``breakers``,
    ``rate_limits``, ``bulkheads``, ``locks``, ``deferred``, ``queues``; with a database
    also ``migrations``, ``idempotency_records``, ``dead_letters`` and ``outbox``; and
    ``task_modules`` when the app's task modules could not be imported.
    """
    secrets = app_secrets(app, cfg)
    report: dict[str, Any] = {
        "redis": masked(cfg.redis_url, secrets),
        "database": masked(cfg.database_url, secrets) if cfg.database_url else None,
    }
    # The task modules a worker would import (imports, include, autodiscovery): their
    # tasks name the breakers, rate limits and bulkheads shown.
    imported = guarded(app.loader.import_default_modules, secrets)
    if isinstance(imported, dict) and "unavailable" in imported:
        report["task_modules"] = imported
    report.update(_redis_sections(app, cfg, secrets))
    report["queues"] = guarded(lambda: queues.depths(app, cfg, secrets), secrets)
    if cfg.database_url:
        engine = quick_engine(cfg.database_url)
        try:
            report.update(database_sections(engine, secrets))
        finally:
            engine.dispose()
    return report
