"""Alembic migrations of celery-reliable's tables."""
