"""What the database holds, as ``reliable status`` shows it: migrations, records, dead letters, outbox."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .probe import guarded, reason

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _count(engine: Engine, table: Any) -> int:
    from sqlalchemy import func, select

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def sections(engine: Engine, secrets: Iterable[str]) -> dict[str, Any]:
    """``migrations``, ``idempotency_records``, ``dead_letters`` and ``outbox``, each read on its own.

    A table its migration has not created yet reads ``None``. When the database cannot
    be reached every section says ``{"unavailable": <reason>}`` (one connection attempt).
    """
    from sqlalchemy import inspect

    from ..deadletter.cli import dead_letter_summary
    from ..migrate import current_revision, head_revision
    from ..outbox.admin import outbox_status
    from ..outbox.model import outbox
    from ..schema import idempotency

    try:
        current = current_revision(engine)
        tables = set(inspect(engine).get_table_names())
    except Exception as exc:
        down = {"unavailable": reason(exc, secrets)}
        return {"migrations": down, "idempotency_records": down, "dead_letters": down, "outbox": down}
    report: dict[str, Any] = {"migrations": {"current": current, "head": head_revision()}}
    report["idempotency_records"] = (
        guarded(lambda: _count(engine, idempotency), secrets) if idempotency.name in tables else None
    )
    report["dead_letters"] = guarded(lambda: dead_letter_summary(engine), secrets)
    report["outbox"] = guarded(lambda: outbox_status(engine), secrets) if outbox.name in tables else None
    return report
