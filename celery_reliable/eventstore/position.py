"""The global position: every committed event gets one, in commit order.

A plain ``bigserial`` numbers rows when they are *inserted*, but transactions *commit* in
another order. A reader that saw position 11 and remembers "after 11" would skip 10 if
10's transaction committed a moment later: the gap fills in behind the reader.

So no position is handed out at insert time. ``reliable_events.position`` is NULL while
the appending transaction runs, and a deferred constraint trigger (migration
``0008_event_store``) numbers the transaction's events when it commits, under the
transaction-scoped advisory lock :data:`POSITION_LOCK_ID`. PostgreSQL makes a commit
visible before it releases the transaction's locks, so the next committing appender can
only take numbers after the previous one is visible. Hence:

- if a reader sees position ``p``, every lower position is either visible too or will
  never exist (its transaction rolled back or failed at commit): reading "after ``P``"
  in position order never skips an event;
- within a transaction events are numbered in insertion order, and the appends of one
  stream are numbered in version order.

The price is that appending transactions serialise for the duration of their commit (not
for the whole transaction: the lock is taken at commit). A settle-window reader (read
only events older than a few seconds) would avoid that, but guesses; this does not.
On SQLite writers are serialised anyway and events are numbered as they are inserted.
"""

from __future__ import annotations

#: The advisory-lock id committing appenders serialise on while their events are numbered.
POSITION_LOCK_ID = 7_308_332_423_715_931_461

#: The position before the first event: ``read_all(session, after=START)`` reads everything.
START = 0
