"""``celery -A proj reliable ...``: the command group plugged in through ``celery.commands``."""

from __future__ import annotations

import json
from typing import Any

import click

from .deadletter.cli import dlq
from .eventstore.cli import projection
from .saga.cli import saga as saga_group


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


@reliable.command(
    help="Show breakers, rate limits, bulkheads, held locks, the deferred set, queue depths, "
    "dead letters and the outbox on one screen."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Print what celery-reliable holds right now; a section whose backend is down says why."""
    from .config import get_config
    from .errors import ReliableError
    from .status import gather, render_text

    app = _app(ctx)
    try:
        cfg = get_config(app)
    except ReliableError as exc:
        raise click.ClickException(str(exc)) from exc
    report = gather(app, cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for line in render_text(report):
        click.echo(line)


@reliable.command(help="Liveness (app and settings load) or, with --readiness, Redis, broker and database checks.")
@click.option("--readiness", is_flag=True, help="Also check Redis, the broker and the database (2 s timeouts).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def health(ctx: click.Context, readiness: bool, as_json: bool) -> None:
    """Print one line per check; exit 1 naming the checks that failed (a Kubernetes probe)."""
    from .status import checks

    found = checks(_app(ctx), readiness)
    failed = [check.name for check in found if not check.ok]
    if as_json:
        report = {"ok": not failed, "failed": failed, "checks": [check.as_dict() for check in found]}
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for check in found:
            click.echo(f"{'ok' if check.ok else 'FAIL':5} {check.name:9} {check.detail}")
    if failed:
        if not as_json:
            click.echo(f"unhealthy: {', '.join(failed)} failed", err=True)
        ctx.exit(1)


reliable.add_command(dlq)
reliable.add_command(saga_group)
reliable.add_command(projection)


@reliable.command(help="Print celery-reliable's Prometheus gauges once, or serve them.")
@click.option("--serve", "port", type=click.IntRange(1, 65535), default=None, help="Serve /metrics on this port.")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on with --serve.")
@click.option("--queue", "queues", multiple=True, help="Report this queue's depth (repeatable; default: every queue).")
@click.pass_context
def metrics(ctx: click.Context, port: int | None, addr: str, queues: tuple[str, ...]) -> None:
    """Gauges read from Redis, the database and the broker (counters are served by the workers)."""
    try:
        from prometheus_client import generate_latest, start_http_server
    except ImportError:
        raise click.UsageError("needs prometheus_client: pip install 'celery-reliable[metrics]'") from None
    from .metrics.server import registry

    reg = registry(_app(ctx), queues or None)
    if port is None:
        click.echo(generate_latest(reg).decode(), nl=False)
        return
    httpd, thread = start_http_server(port, addr=addr, registry=reg)
    click.echo(f"serving http://{addr}:{port}/metrics (Ctrl-C stops)")
    try:
        thread.join()
    except KeyboardInterrupt:
        httpd.shutdown()
