"""``celery -A proj reliable ...``: the command group plugged in through ``celery.commands``."""

from __future__ import annotations

import json
from typing import Any

import click

from .deadletter.cli import dead_letter_summary, dlq


def _app(ctx: click.Context) -> Any:
    return ctx.obj.app


@click.group(name="reliable", help="celery-reliable: migrations, status and dead letters.")
def reliable() -> None:
    """The ``reliable`` command group."""


@reliable.command(help="Create or upgrade celery-reliable's tables (Alembic migrations).")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def migrate(ctx: click.Context, revision: str) -> None:
    """Run the migrations against ``reliable_database_url``."""
    from .clients import _safe
    from .migrate import current_revision, upgrade
    from .runtime import runtime

    rt = runtime(_app(ctx))
    if not rt.has_database:
        raise click.UsageError("reliable_database_url is not set; there is no database to migrate")
    engine = rt.engine()
    upgrade(engine, revision)
    click.echo(f"{_safe(rt.config.database_url or '')}: at revision {current_revision(engine)}")


@reliable.command(help="Show the deferred set, the idempotency store and the dead letters.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Print what celery-reliable holds right now."""
    from .migrate import current_revision, head_revision
    from .runtime import runtime

    rt = runtime(_app(ctx))
    report: dict[str, Any] = {
        "deferred": rt.deferred().sizes(),
        "redis_warm": rt.idempotency().is_warm() if rt.has_database else None,
    }
    if rt.has_database:
        from sqlalchemy import func, select

        from .schema import idempotency

        current = current_revision(rt.engine())
        report["migrations"] = {"current": current, "head": head_revision()}
        if current is not None:
            with rt.engine().connect() as conn:
                report["idempotency_records"] = conn.execute(select(func.count()).select_from(idempotency)).scalar()
            report["dead_letters"] = dead_letter_summary(rt.engine())
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for name, value in report.items():
        click.echo(f"{name:22} {value}")


reliable.add_command(dlq)
