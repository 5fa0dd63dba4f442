"""``self.transaction()``: the task's database effects, its idempotency record and its result, one commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from . import _failpoints
from .errors import DuplicateExecution, DuplicateMessage, IdempotencyKeyMismatch, TransactionError
from .execution import Execution, current
from .idempotency import db_store
from .runtime import runtime

if TYPE_CHECKING:
    from celery import Task


def _claim_record(session: Session, ex: Execution) -> None:
    """Insert the key's record first in the transaction, or raise for a duplicate."""
    assert ex.scoped is not None
    conn = session.connection()
    if db_store.insert_committed(conn, ex.scoped, ex.task_name, ex.fingerprint, ex.task_id, ex.ttl_ms):
        return
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


def _record_inbox(session: Session, ex: Execution) -> None:
    """Record the message in the consumer's inbox, or roll back and raise for a duplicate."""
    from . import inbox

    entry = ex.inbox
    assert entry is not None
    if inbox.record(session, entry.consumer, entry.message_id, entry.ttl_ms / 1000.0):
        return
    session.rollback()
    ex.inbox_duplicate = True
    raise DuplicateMessage(entry.consumer, entry.message_id)


@contextmanager
def task_transaction(task: Task, commit_on_exit: bool = False) -> Iterator[Session]:
    """Open a session whose commit also records the idempotency key and the task's result.

    For a task with an idempotency key the record is inserted first (then, for a task
    with the ``inbox`` option, its message id: a message already processed rolls back and
    raises :class:`DuplicateMessage`, which ends the task with ``None``), so a concurrent
    duplicate waits on the key's row and then fails cleanly (the session is rolled back
    and :class:`DuplicateExecution` raised; ReliableTask turns it into the stored result).
    The block's end flushes; the commit happens when the task returns, together with the
    result, so no crash can leave effects without a result. If the task raises after the
    block, everything rolls back and the key stays usable for a retry.

    Args:
        task: the running task.
        commit_on_exit: commit at the end of the block instead (for code after the block
            that must see the data committed); a crash between that commit and the end of
            the task then leaves the key committed without a result, and duplicates get
            ``None``.

    Without an idempotency key, or called outside a worker, it is a plain session that
    commits at the end of the block.

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
    keyed = ex if ex is not None and ex.scoped is not None else None
    session = Session(engine)
    handed_over = False
    try:
        session.begin()
        if keyed is not None:
            _claim_record(session, keyed)
        if ex is not None and ex.inbox is not None:
            _record_inbox(session, ex)
        yield session
        if keyed is not None and not commit_on_exit:
            session.flush()
            keyed.pending = session  # committed with the result when the task returns
            handed_over = True
            return
        _failpoints.hit("before_commit", task.request.id, rt.config.redis_url)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        if not handed_over:
            session.close()
    if keyed is not None:
        keyed.committed = True
        _failpoints.hit("after_commit", task.request.id, rt.config.redis_url)
