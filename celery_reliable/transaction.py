"""``self.transaction()``: the task's database effects and its idempotency record, one commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from . import _failpoints
from .errors import DuplicateExecution, IdempotencyKeyMismatch, TransactionError
from .execution import current
from .idempotency import db_store
from .runtime import runtime

if TYPE_CHECKING:
    from celery import Task


@contextmanager
def task_transaction(task: Task) -> Iterator[Session]:
    """Open a session whose commit also records the idempotency key as committed.

    The record is inserted first, so a concurrent duplicate waits on the key's row and
    then fails cleanly; on a duplicate the session is rolled back and
    :class:`DuplicateExecution` is raised (ReliableTask turns it into the stored result).
    Called directly (outside a worker execution) it is a plain session that commits.

    Raises:
        TransactionError: entered twice in one execution, or no database configured.
        IdempotencyKeyMismatch: the key committed earlier with other arguments.
    """
    rt = runtime(task.app)
    engine = rt.engine()
    ex = current.get()
    if ex is not None and ex.task_id != task.request.id:
        ex = None
    if ex is not None:
        if ex.transaction_used:
            raise TransactionError(
                f"{task.name}: self.transaction() can be entered once per execution "
                "(its commit is what marks the idempotency key as done); put every effect in one block"
            )
        ex.transaction_used = True
    session = Session(engine)
    try:
        session.begin()
        if ex is not None and ex.scoped is not None:
            conn = session.connection()
            if not db_store.insert_committed(conn, ex.scoped, ex.task_name, ex.fingerprint, ex.task_id, ex.ttl_ms):
                stored = db_store.fetch(conn, ex.scoped)
                session.rollback()
                if stored is None:  # expired between the two statements: let the retry decide
                    raise DuplicateExecution(f"{ex.scoped!r} changed while committing; try again", ex.scoped)
                if stored.fingerprint != ex.fingerprint:
                    raise IdempotencyKeyMismatch(ex.scoped, stored.fingerprint, ex.fingerprint)
                ex.duplicate = stored
                raise DuplicateExecution(
                    f"idempotency key {ex.scoped!r} was already committed by task {stored.task_id}; "
                    "this execution's transaction was rolled back",
                    ex.scoped,
                )
        yield session
        _failpoints.hit("before_commit", task.request.id, rt.config.redis_url)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    if ex is not None:
        ex.committed = ex.scoped is not None
        _failpoints.hit("after_commit", task.request.id, rt.config.redis_url)
