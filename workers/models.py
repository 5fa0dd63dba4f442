"""The application's own tables (here: payments), and ``python -m workers.models`` to create them.

A real application manages these with its own Alembic migrations; celery-reliable's
tables come from ``celery -A workers.app reliable migrate`` and are kept apart
(their version table is ``reliable_alembic_version``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, create_engine, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the application's tables."""


class Payment(Base):
    """One charge of an order. No unique constraint: exactly-once comes from the task."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    task_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def create_tables(database_url: str) -> None:
    """Create the application's tables that do not exist yet."""
    engine = create_engine(database_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()


if __name__ == "__main__":
    from .app import app

    create_tables(app.conf.reliable_database_url)
    print("application tables ready")
