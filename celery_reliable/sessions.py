"""The caller's transaction, given as a SQLAlchemy ``Session`` or ``Connection``."""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session


def connection_of(session: Session | Connection) -> Connection:
    """The connection of the caller's transaction (a ``Session``'s, or the ``Connection`` itself)."""
    return session.connection() if isinstance(session, Session) else session
