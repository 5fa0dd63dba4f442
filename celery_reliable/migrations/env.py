"""Alembic environment: runs on the connection handed over by :mod:`celery_reliable.migrate`."""

from __future__ import annotations

from alembic import context

from celery_reliable.migrate import VERSION_TABLE
from celery_reliable.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
