"""``celery -A proj reliable dlq ...``: list, show, replay, purge and count dead letters."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from .record import REASONS, DeadLetterNotFound
from .timespec import DurationParam, SinceParam

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from .store import DeadLetterStore


def dead_letter_summary(engine: Engine) -> dict[str, Any] | None:
    """``{total, by_reason}`` for ``reliable status``; ``None`` before the table's migration."""
    from sqlalchemy import inspect

    from .store import DeadLetterStore

    if not inspect(engine).has_table("reliable_dead_letters"):
        return None
    by_reason = DeadLetterStore(engine).count(by="reason")
    return {"total": sum(by_reason.values()), "by_reason": by_reason}


def _store(ctx: click.Context) -> DeadLetterStore:
    from sqlalchemy import inspect

    from ..clients import _safe
    from ..runtime import runtime
    from .store import DeadLetterStore

    rt = runtime(ctx.obj.app)
    if not rt.has_database:
        raise click.UsageError("reliable_database_url is not set; dead letters are kept in the database")
    engine = rt.engine()
    if not inspect(engine).has_table("reliable_dead_letters"):
        raise click.ClickException(
            f"{_safe(rt.config.database_url or '')} has no reliable_dead_letters table; "
            "run `celery -A proj reliable migrate`"
        )
    return DeadLetterStore(engine)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


_reason = click.option("--reason", type=click.Choice(REASONS), help="Only letters of this reason.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(name="dlq", help="Dead letters: ls, show, replay, purge, count.")
def dlq() -> None:
    """The ``dlq`` command group."""


@dlq.command(name="ls", help="List dead letters, oldest first.")
@click.option("--task", help="Only letters of this task name.")
@_reason
@click.option("--since", type=SinceParam(), help="Only letters stored since: 1h, 7d, 2026-11-01, 2026-11-01T12:00Z.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Letters per page.")
@click.option("--after", "after_id", type=int, help="Only letters with a larger id (the next page).")
@_json
@click.pass_context
def ls(
    ctx: click.Context,
    task: str | None,
    reason: str | None,
    since: datetime | None,
    limit: int,
    after_id: int | None,
    as_json: bool,
) -> None:
    """Print one page of letters."""
    from . import render

    letters = _store(ctx).list(task=task, reason=reason, since=since, limit=limit, after_id=after_id)
    if as_json:
        _echo_json([render.summary(letter) for letter in letters])
        return
    if not letters:
        click.echo("no dead letters")
        return
    for line in render.table(letters):
        click.echo(line)
    if len(letters) == limit:
        click.echo(f"(first {limit}; next page: --after {letters[-1].id})")


@dlq.command(help="Show one dead letter in full: arguments, history, traceback.")
@click.argument("letter_id", metavar="ID", type=int)
@_json
@click.pass_context
def show(ctx: click.Context, letter_id: int, as_json: bool) -> None:
    """Print every field of one letter."""
    from . import render
    from .codec import as_dict

    try:
        letter = _store(ctx).get(letter_id)
    except DeadLetterNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(as_dict(letter))
        return
    for line in render.details(letter):
        click.echo(line)


@dlq.command(help="Publish dead letters again (once each; --again to publish replayed ones once more).")
@click.argument("letter_id", metavar="[ID]", type=int, required=False)
@click.option("--task", help="Replay the letters of this task name.")
@_reason
@click.option("--dry-run", is_flag=True, help="Show what would be published; publish nothing.")
@click.option("--again", is_flag=True, help="Also publish letters that were replayed before.")
@_json
@click.pass_context
def replay(
    ctx: click.Context,
    letter_id: int | None,
    task: str | None,
    reason: str | None,
    dry_run: bool,
    again: bool,
    as_json: bool,
) -> None:
    """Replay one letter by id, or the letters of a task and/or reason; exit 1 if a publish failed."""
    import dataclasses

    from . import render

    if (letter_id is None) == (task is None and reason is None):
        raise click.UsageError("give a letter ID, or --task and/or --reason (not both)")
    store = _store(ctx)
    try:
        results = store.replay(ctx.obj.app, id=letter_id, task=task, dry_run=dry_run, reason=reason, again=again)
    except DeadLetterNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json([dataclasses.asdict(r) for r in results])
    else:
        for line in render.replay_lines(results):
            click.echo(line)
    if any(r.status == "failed" for r in results):
        ctx.exit(1)


@dlq.command(help="Delete dead letters stored longer ago than --older-than (asks first unless --yes).")
@click.option("--older-than", "older_than", type=DurationParam(), required=True, help="Age: 30d, 12h, 2w, seconds.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, yes: bool) -> None:
    """Delete old letters in bounded batches."""
    from ..runtime import runtime

    store = _store(ctx)
    found = store.total(older_than=older_than)
    if not found:
        click.echo(f"no dead letters older than {older_than}")
        return
    if not yes:
        click.confirm(f"Delete {found} dead letter(s) older than {older_than}?", abort=True)
    deleted = store.purge(older_than, batch=runtime(ctx.obj.app).config.dead_letter_batch)
    click.echo(f"deleted {deleted} dead letter(s) older than {older_than}")


@dlq.command(help="Count dead letters by reason and by task.")
@_json
@click.pass_context
def count(ctx: click.Context, as_json: bool) -> None:
    """Print the totals."""
    store = _store(ctx)
    by_reason, by_task = store.count(by="reason"), store.count(by="task")
    report = {"total": sum(by_reason.values()), "by_reason": by_reason, "by_task": by_task}
    if as_json:
        _echo_json(report)
        return
    click.echo(f"{'total':30} {report['total']}")
    for title, counts in (("by reason", by_reason), ("by task", by_task)):
        click.echo(f"{title}:")
        for name, n in counts.items():
            click.echo(f"  {name:28} {n}")
