"""Operating the outbox: retention cleanup, dead rows, and the numbers ``reliable status`` shows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from .model import CHANNEL, DEAD, PENDING, PUBLISHED, outbox

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Engine


def cleanup_published(engine: Engine, retention: timedelta, batch: int = 1000) -> int:
    """Delete rows published longer than ``retention`` ago, ``batch`` rows per transaction.

    Pending and dead rows are never deleted here.

    Returns:
        How many rows were deleted.
    """
    cutoff = datetime.now(timezone.utc) - retention
    deleted = 0
    while True:
        ids = (
            select(outbox.c.id)
            .where(outbox.c.state == PUBLISHED, outbox.c.published_at < cutoff)
            .order_by(outbox.c.published_at)
            .limit(batch)
            .scalar_subquery()
        )
        with engine.begin() as conn:
            n = conn.execute(delete(outbox).where(outbox.c.id.in_(ids))).rowcount or 0
        deleted += n
        if n < batch:
            return deleted


def requeue_dead(engine: Engine, message_ids: list[str] | None = None) -> int:
    """Make dead rows pending again with a fresh attempt count (all of them when ``message_ids`` is None).

    Returns:
        How many rows were requeued.
    """
    stmt = update(outbox).where(outbox.c.state == DEAD)
    if message_ids is not None:
        stmt = stmt.where(outbox.c.message_id.in_(list(message_ids)))
    with engine.begin() as conn:
        n = conn.execute(stmt.values(state=PENDING, attempts=0, next_attempt_at=None)).rowcount or 0
        if n and conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_notify(CHANNEL, "")))
    return n


def discard_dead(engine: Engine, message_ids: list[str]) -> int:
    """Delete dead rows for good (their ordering keys go on with the next row).

    Returns:
        How many rows were deleted.
    """
    with engine.begin() as conn:
        stmt = delete(outbox).where(outbox.c.state == DEAD, outbox.c.message_id.in_(list(message_ids)))
        return conn.execute(stmt).rowcount or 0


def outbox_status(engine: Engine) -> dict[str, Any]:
    """Pending and dead counts, and the lag: seconds since the oldest pending row was written."""
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                select(outbox.c.state, func.count()).where(outbox.c.state.in_((PENDING, DEAD))).group_by(outbox.c.state)
            ).all()
        )
        oldest = conn.execute(
            select(outbox.c.created_at).where(outbox.c.state == PENDING).order_by(outbox.c.id).limit(1)
        ).scalar()
    lag = 0.0
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
        lag = max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
    return {"pending": int(counts.get(PENDING, 0)), "dead": int(counts.get(DEAD, 0)), "lag_seconds": lag}


def cleanup_outbox(app: Celery) -> dict[str, int]:
    """The beat job: delete rows published longer than ``reliable_outbox_retention`` ago."""
    from ..clients import engine_for
    from .settings import outbox_config

    cfg = outbox_config(app)
    if not cfg.database_url:
        return {"deleted": 0}
    retention = timedelta(milliseconds=cfg.retention_ms)
    return {"deleted": cleanup_published(engine_for(cfg.database_url), retention, cfg.cleanup_batch)}
