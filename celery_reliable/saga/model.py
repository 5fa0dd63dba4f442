"""The saga log: one row per saga and one row per thing that happened to it.

Created by migration ``0009_sagas``. A saga moves through these states::

    running(step i) ──step i done──▶ running(i + 1) … ──last step done──▶ completed
        │ step i failed, deadline passed, or cancelled
        ▼
    compensating(j) ──compensation j done──▶ compensating(next lower j) … ──▶ compensated
        │ compensation j failed after its retries
        ▼
      failed  (an operator looks; ``celery -A proj reliable saga resume ID`` tries again)

``step`` is the index of the step being run (``running``) or compensated
(``compensating``); ``-1`` once nothing is left. ``context`` is the saga's JSON
context: the payload merged with every completed step's result. ``lease_until`` is
when the current step counts as lost (no worker renewed it) and is driven again;
``deadline_at`` is the saga-wide timeout. Both are compared with the database's clock.
``redrives`` counts how often the sweep sent the current step again (reset by every move).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, Integer, String, Table, Text, text

from ..schema import metadata

#: Steps run forward.
RUNNING = "running"
#: Completed steps are being undone, last first.
COMPENSATING = "compensating"
#: Every step ran. Terminal.
COMPLETED = "completed"
#: Every completed step was compensated. Terminal.
COMPENSATED = "compensated"
#: A compensation failed after its retries; needs an operator.
FAILED = "failed"

#: All states, in the order a listing shows them.
STATES = (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED)
#: States whose current step a sweep drives again when its lease runs out.
ACTIVE = (RUNNING, COMPENSATING)

#: Why a saga compensates.
STEP_FAILED = "step_failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

sagas = Table(
    "reliable_sagas",
    metadata,
    Column("saga_id", String(255), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(16), nullable=True),
    Column("step", Integer, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("context", Text, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("error", Text, nullable=True),
    Column("failed_step", Integer, nullable=True),
    Column("redrives", Integer, nullable=False, server_default="0"),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_reliable_sagas_lease", "lease_until", postgresql_where=text("state IN ('running', 'compensating')")),
    Index("ix_reliable_sagas_deadline", "deadline_at", postgresql_where=text("state = 'running'")),
    Index("ix_reliable_sagas_created", "created_at"),
)

saga_log = Table(
    "reliable_saga_log",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("saga_id", String(255), nullable=False),
    Column("event", String(32), nullable=False),
    Column("step", Integer, nullable=True),
    Column("step_name", String(255), nullable=True),
    Column("detail", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_reliable_saga_log_saga", "saga_id", "id"),
)
