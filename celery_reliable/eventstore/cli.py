"""``celery -A proj reliable projection ls|rebuild|catch-up``: operate projections.

The projections are the ones the app module defines (importing it registers them).
"""

from __future__ import annotations

import json
from typing import Any

import click


def _app(ctx: click.Context) -> Any:
    return ctx.obj.app


def _engine(ctx: click.Context) -> Any:
    from ..runtime import runtime

    rt = runtime(_app(ctx))
    if not rt.has_database:
        raise click.UsageError("reliable_database_url is not set; there is no event store")
    return rt.engine()


@click.group(name="projection", help="Event-sourcing projections: list, rebuild from position 0, catch up.")
def projection() -> None:
    """The ``projection`` command group."""


@projection.command(name="ls", help="List projections with their checkpoint and how far behind the store they are.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """Print one line per projection."""
    from .replay import projection_status

    rows = projection_status(_engine(ctx))
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("no projections")
    for row in rows:
        where = "" if row["defined"] else "  (not defined by this app)"
        rebuilt = row["rebuilt_at"] or "never"
        click.echo(
            f"{row['name']:30} position {row['position']:>10}  behind {row['behind']:>8}  rebuilt {rebuilt}{where}"
        )


@projection.command(name="rebuild", help="Reset a projection's read model and replay every event from position 0.")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--batch", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="Events per read.")
@click.pass_context
def rebuild_cmd(ctx: click.Context, name: str, yes: bool, batch: int) -> None:
    """Rebuild NAME in one transaction (live consumers of it wait until it commits)."""
    from .errors import UnknownProjection
    from .projection import get_projection
    from .replay import rebuild

    try:
        proj = get_projection(name)
    except UnknownProjection as exc:
        raise click.ClickException(str(exc)) from exc
    if not yes:
        click.confirm(f"Reset projection {name!r} and replay every event?", abort=True)
    try:
        result = rebuild(_engine(ctx), proj, batch=batch)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}: rebuilt from {result.read} events ({result.applied} applied), position {result.position}")


@projection.command(name="catch-up", help="Apply the events after a projection's checkpoint.")
@click.argument("name")
@click.pass_context
def catch_up_cmd(ctx: click.Context, name: str) -> None:
    """Catch NAME up to the head of the store."""
    from .errors import UnknownProjection
    from .projection import get_projection
    from .replay import catch_up

    try:
        proj = get_projection(name)
    except UnknownProjection as exc:
        raise click.ClickException(str(exc)) from exc
    result = catch_up(_engine(ctx), proj)
    click.echo(f"{name}: {result.read} events read ({result.applied} applied), position {result.position}")
