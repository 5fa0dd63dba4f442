"""Run celery-reliable's Alembic migrations against a database."""

from __future__ import annotations

from importlib import resources

from sqlalchemy.engine import Engine

#: Alembic's version table for our migrations, kept apart from the application's own.
VERSION_TABLE = "reliable_alembic_version"


def _alembic_config(connection: object) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("celery_reliable").joinpath("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind ``engine`` up to ``revision`` (default: the newest)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), revision)  # type: ignore[arg-type]


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or ``None`` before any migration."""
    from alembic.migration import MigrationContext

    with engine.connect() as connection:
        ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


def head_revision() -> str:
    """Return the newest revision shipped with the package."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]
    head = script.get_current_head()
    assert head is not None
    return head
