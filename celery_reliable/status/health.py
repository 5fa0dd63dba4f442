"""``reliable health``: liveness and readiness checks short enough for a Kubernetes probe.

Liveness passes when the app imports and its ``reliable_*`` settings parse. Readiness
also asks each backend once, with :data:`~.probe.TIMEOUT`-second timeouts: Redis
answers ``PING``, the broker accepts a connection, and the database (when configured)
answers ``SELECT 1`` and is migrated to the newest revision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .probe import masked, quick_engine, quick_redis, reason, secrets_of, timed

if TYPE_CHECKING:
    from celery import Celery


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, whether it passed, what it found, and how long it took."""

    name: str
    ok: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The check as plain values, for ``--json``."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def _run(name: str, probe: Callable[[], str], secrets: tuple[str, ...]) -> Check:
    try:
        detail, seconds = timed(probe)
    except Exception as exc:
        return Check(name, False, reason(exc, secrets), 0.0)
    return Check(name, True, detail, seconds)


def _redis(url: str, secrets: tuple[str, ...]) -> str:
    client = quick_redis(url)
    try:
        client.ping()
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return f"{masked(url, secrets)} answers PING"


def _broker(app: Celery, secrets: tuple[str, ...]) -> str:
    from .queues import broker_connection, connect

    connection = broker_connection(app)
    try:
        connect(connection)
        return f"{masked(connection.as_uri(include_password=True), secrets)} accepts connections"
    finally:
        with contextlib.suppress(Exception):
            connection.release()


def _database(url: str, secrets: tuple[str, ...]) -> str:
    from sqlalchemy import text

    from ..migrate import current_revision, head_revision

    engine = quick_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    if current != head:
        raise RuntimeError(f"migrations at {current or 'none'}, head is {head}: run `celery -A proj reliable migrate`")
    return f"{masked(url, secrets)} answers SELECT 1, migrations at head {head}"


def checks(app: Celery, readiness: bool) -> list[Check]:
    """Run the checks: liveness only, or with ``readiness`` every backend too (not when settings fail)."""
    from ..config import get_config
    from .gather import app_secrets

    try:
        cfg = get_config(app)
    except Exception as exc:
        return [Check("settings", False, reason(exc, secrets_of([app.conf.broker_url])), 0.0)]
    secrets = app_secrets(app, cfg)
    found = [Check("settings", True, f"app {app.main or '?'} loaded, reliable_* settings parsed", 0.0)]
    if not readiness:
        return found
    found.append(_run("redis", lambda: _redis(cfg.redis_url, secrets), secrets))
    found.append(_run("broker", lambda: _broker(app, secrets), secrets))
    if cfg.database_url:
        url = cfg.database_url
        found.append(_run("database", lambda: _database(url, secrets), secrets))
    return found
