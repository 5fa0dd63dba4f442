"""The consumer inbox: a message delivered twice changes state once.

Two ways to use it:

* the ``inbox`` option of a :class:`~celery_reliable.ReliableTask`: ``inbox=True`` (the
  message id is the task id, as the outbox publishes it) or a template over the task's
  arguments (``inbox="{event_id}"``). ``self.transaction()`` then records the id first, and a
  duplicate rolls back and ends the task with ``None`` (event ``task-deduplicated``);
* :func:`record` in any SQLAlchemy transaction, for consumers outside Celery::

      with Session(engine) as session, session.begin():
          if not inbox.record(session, "billing", event["id"]):
              return  # processed before: nothing to do
          apply(session, event)

Expired rows are deleted by the ``celery_reliable.cleanup_inbox`` beat job.
"""

from __future__ import annotations

from .option import InboxEntry, InboxSpec, compile_inbox
from .store import DEFAULT_TTL, delete_expired, inbox, record, seen

__all__ = ["DEFAULT_TTL", "InboxEntry", "InboxSpec", "compile_inbox", "delete_expired", "inbox", "record", "seen"]
