"""Event sourcing on PostgreSQL: streams, optimistic concurrency, upcasting, snapshots,
publishing through the outbox, and projections fed once per event through the inbox.

::

    with Session(engine) as session, session.begin():
        account = load(session, Account, "account-42")     # snapshot + later events
        account.deposit(10)                                # records "Deposited"
        save(session, account, publish=balances_task)      # append + outbox, one commit

- :func:`append` / :func:`read_stream` / :func:`read_all` (:mod:`.store`): a stream's
  version is checked by one conditional statement; a stale ``expected_version`` raises
  :class:`ConcurrencyConflict`; :func:`read_all` reads in commit order (:mod:`.position`);
- :func:`run_command` (:mod:`.commands`): a command again on conflict (3 retries, backoff);
- :class:`Aggregate`, :func:`applies`, :func:`load`, :func:`save` (:mod:`.aggregate`,
  :mod:`.repository`), snapshots (:mod:`.snapshots`), :class:`Upcasters` (:mod:`.upcasting`);
- :class:`Projection` (:mod:`.projection`), :func:`catch_up`, :func:`rebuild` (:mod:`.replay`) and the
  ``projection`` CLI group (:mod:`.cli`).

Tables: migration ``0008_event_store`` (:mod:`.model`).
"""

from __future__ import annotations

from .aggregate import Aggregate, applies
from .commands import run_command
from .errors import ConcurrencyConflict, DuplicateEvent, EventStoreError, UnknownEventType, UnknownProjection
from .events import NewEvent, RecordedEvent
from .position import START
from .projection import Projection, get_projection, projection_names
from .replay import ReplayResult, catch_up, checkpoint, projection_status, rebuild
from .repository import load, save
from .snapshots import Snapshot, delete_snapshot, read_snapshot, write_snapshot
from .store import ANY_VERSION, NO_STREAM, append, head_position, lock_stream, read_all, read_stream, stream_version
from .upcasting import Upcasters

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "START",
    "Aggregate",
    "ConcurrencyConflict",
    "DuplicateEvent",
    "EventStoreError",
    "NewEvent",
    "Projection",
    "RecordedEvent",
    "ReplayResult",
    "Snapshot",
    "UnknownEventType",
    "UnknownProjection",
    "Upcasters",
    "append",
    "applies",
    "catch_up",
    "checkpoint",
    "delete_snapshot",
    "get_projection",
    "head_position",
    "load",
    "lock_stream",
    "projection_names",
    "projection_status",
    "read_all",
    "read_snapshot",
    "read_stream",
    "rebuild",
    "run_command",
    "save",
    "stream_version",
    "write_snapshot",
]
