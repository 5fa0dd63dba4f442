"""The ``reliable_outbox_*`` settings of an app, checked once and cached on the app.

Read apart from :class:`~celery_reliable.config.ReliableConfig` so that a process that
only enqueues (a web app) needs no Redis settings; checked with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import _check
from ..defaults import SETTINGS_BY_NAME

if TYPE_CHECKING:
    from celery import Celery

_CACHE_ATTR = "_celery_reliable_outbox_config"


@dataclass(frozen=True)
class OutboxConfig:
    """Outbox settings, durations in milliseconds."""

    database_url: str | None
    batch: int
    interval_ms: int
    run_limit_ms: int
    max_attempts: int
    retry_base_ms: int
    retry_cap_ms: int
    retention_ms: int
    listen: bool
    poll_interval_ms: int
    require_registered: bool
    max_message_bytes: int | None
    cleanup_batch: int


def setting(app: Celery, name: str) -> Any:
    """One checked setting of ``app`` (its default when unset).

    Raises:
        ConfigurationError: naming the setting when its value is wrong.
    """
    spec = SETTINGS_BY_NAME[name]
    return _check(spec, app.conf.get(name, spec.default))


def outbox_config(app: Celery) -> OutboxConfig:
    """The app's outbox settings (parsed on first use, then cached on the app)."""
    found: OutboxConfig | None = app.__dict__.get(_CACHE_ATTR)
    if found is None:
        base = setting(app, "reliable_outbox_retry_base")
        found = OutboxConfig(
            database_url=setting(app, "reliable_database_url"),
            batch=setting(app, "reliable_outbox_batch"),
            interval_ms=max(setting(app, "reliable_outbox_interval"), 10),
            run_limit_ms=setting(app, "reliable_outbox_run_limit"),
            max_attempts=setting(app, "reliable_outbox_max_attempts"),
            retry_base_ms=max(base, 1),
            retry_cap_ms=max(setting(app, "reliable_outbox_retry_cap"), base, 1),
            retention_ms=setting(app, "reliable_outbox_retention"),
            listen=setting(app, "reliable_outbox_listen"),
            poll_interval_ms=max(setting(app, "reliable_outbox_poll_interval"), 10),
            require_registered=setting(app, "reliable_outbox_require_registered"),
            max_message_bytes=setting(app, "reliable_max_message_bytes"),
            cleanup_batch=setting(app, "reliable_cleanup_batch"),
        )
        app.__dict__[_CACHE_ATTR] = found
    return found
