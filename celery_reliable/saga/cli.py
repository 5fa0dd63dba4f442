"""``celery -A proj reliable saga ...``: list sagas, show one, cancel, resume, sweep."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from .model import STATES

if TYPE_CHECKING:
    from celery import Celery


def _app(ctx: click.Context) -> Any:
    return ctx.find_root().obj.app if ctx.obj is None else ctx.obj.app


def _checked(ctx: click.Context) -> Celery:
    """The app, with a clear error when there is no database or no saga table."""
    from sqlalchemy import inspect

    from ..clients import _safe
    from ..runtime import runtime

    app = _app(ctx)
    rt = runtime(app)
    if not rt.has_database:
        raise click.UsageError("reliable_database_url is not set; sagas keep their log in the database")
    if not inspect(rt.engine()).has_table("reliable_sagas"):
        raise click.ClickException(
            f"{_safe(rt.config.database_url or '')} has no reliable_sagas table; run `celery -A proj reliable migrate`"
        )
    return app


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _step_label(row: dict[str, Any]) -> str:
    if row["step"] < 0:
        return "-"
    name = row.get("step_name")
    return f"{row['step'] + 1}/{row['steps']}" + (f" {name}" if name else "")


_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(name="saga", help="Sagas: ls, status, cancel, resume, sweep.")
def saga() -> None:
    """The ``saga`` command group."""


@saga.command(name="ls", help="List sagas, newest first.")
@click.option("--state", type=click.Choice(STATES), help="Only sagas in this state.")
@click.option("--name", help="Only sagas of this name.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@_json
@click.pass_context
def ls(ctx: click.Context, state: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """One line per saga: id, name, state, current step, reason, created."""
    from .status import list_sagas

    rows = list_sagas(_checked(ctx), state, name, limit)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no sagas")
        return
    click.echo(f"{'ID':34} {'NAME':20} {'STATE':13} {'STEP':22} {'REASON':12} CREATED")
    for r in rows:
        click.echo(
            f"{r['saga_id']:34} {r['name']:20} {r['state']:13} {_step_label(r):22} {r['reason'] or '-':12} "
            f"{r['created_at']}"
        )


@saga.command(help="Show one saga (steps, context, log), or with no ID the count of sagas per name and state.")
@click.argument("saga_id", required=False)
@_json
@click.pass_context
def status(ctx: click.Context, saga_id: str | None, as_json: bool) -> None:
    """One saga in full, or the counts per name and state."""
    from .errors import SagaNotFound
    from .status import saga_counts, saga_status

    app = _checked(ctx)
    if saga_id is None:
        counts = saga_counts(app)
        if as_json:
            _echo_json(counts)
            return
        if not counts:
            click.echo("no sagas")
        for name, by_state in counts.items():
            click.echo(f"{name}: " + ", ".join(f"{state} {n}" for state, n in by_state.items()))
        return
    try:
        found = saga_status(app, saga_id)
    except SagaNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(found)
        return
    click.echo(f"saga {found['saga_id']} ({found['name']}): {found['state']}")
    if found["reason"]:
        click.echo(f"  reason:   {found['reason']}" + (f" ({found['error']})" if found["error"] else ""))
    click.echo(f"  created:  {found['created_at']}   deadline: {found['deadline_at']}")
    if found["finished_at"]:
        click.echo(f"  finished: {found['finished_at']}")
    click.echo(f"  redrives: {found['redrives']}")
    click.echo("  steps:")
    for step in found["step_states"]:
        click.echo(f"    {step['index'] + 1}. {step['name'] or '?':24} {step['state']}")
    click.echo(f"  context:  {json.dumps(found['context'], sort_keys=True, ensure_ascii=False)}")
    click.echo("  log:")
    for event in found["log"]:
        where = f" step {event['step'] + 1} {event['step_name'] or ''}".rstrip() if event["step"] is not None else ""
        detail = f": {event['detail']}" if event["detail"] else ""
        click.echo(f"    {event['at']} {event['event']}{where}{detail}")


def _one(ctx: click.Context, saga_id: str, action: str) -> bool:
    from . import driver
    from .errors import SagaError

    app = _checked(ctx)
    try:
        return bool(driver.cancel(app, saga_id) if action == "cancel" else driver.resume(app, saga_id))
    except SagaError as exc:
        raise click.ClickException(str(exc)) from None


@saga.command(help="Stop a running saga and compensate its completed steps.")
@click.argument("saga_id")
@click.pass_context
def cancel(ctx: click.Context, saga_id: str) -> None:
    """Cancel one saga; exit 1 if it was not running."""
    if not _one(ctx, saga_id, "cancel"):
        raise click.ClickException(f"saga {saga_id!r} is not running; nothing to cancel")
    click.echo(f"saga {saga_id}: cancelled, compensating")


@saga.command(help="Try the failed compensation of a saga again (after fixing its cause).")
@click.argument("saga_id")
@click.pass_context
def resume(ctx: click.Context, saga_id: str) -> None:
    """Resume one failed saga; exit 1 if it was not failed."""
    if not _one(ctx, saga_id, "resume"):
        raise click.ClickException(f"saga {saga_id!r} is not failed; nothing to resume")
    click.echo(f"saga {saga_id}: compensating again")


@saga.command(help="Time out overdue sagas and send lost steps again, once, now.")
@_json
@click.pass_context
def sweep(ctx: click.Context, as_json: bool) -> None:
    """Run one sweep (workers with the bootstep, or beat, do this periodically)."""
    from .driver import sweep_sagas

    found = sweep_sagas(_checked(ctx))
    if as_json:
        _echo_json(found)
    else:
        click.echo(f"timed out {found['timed_out']}, sent again {found['redriven']}")
