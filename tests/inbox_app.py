"""Consumer-inbox tasks for the worker tests, on the app of tests/worker_app.py.

Start workers with ``app="tests.inbox_app"``: the module registers its tasks on the same
app (same brokers, databases and settings) and re-exports it.
"""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import text

from celery_reliable import ReliableTask
from tests.worker_app import app, ledger

__all__ = ["app", "apply_event", "apply_message"]


def _effect(task: ReliableTask, message_id: str, amount: int, hold: float, kill: str) -> str:
    ledger().rpush("inbox-bodies", f"{message_id}:{task.request.id}:{os.getpid()}")
    with task.transaction() as session:
        session.execute(
            text("INSERT INTO effects_ledger (key, task_id, pid, amount) VALUES (:k, :t, :p, :a)"),
            {"k": message_id, "t": task.request.id, "p": os.getpid(), "a": amount},
        )
        time.sleep(hold)
        if kill == "in_block" and ledger().set(f"inbox-kill:in_block:{message_id}", os.getpid(), nx=True):
            ledger().incr("inbox-kills")
            os.kill(os.getpid(), signal.SIGKILL)  # effects written, not committed
    if kill == "after_commit" and ledger().set(f"inbox-kill:after_commit:{message_id}", os.getpid(), nx=True):
        ledger().incr("inbox-kills")
        os.kill(os.getpid(), signal.SIGKILL)  # committed, not acknowledged: the broker delivers it again
    return f"applied:{message_id}"


@app.task(base=ReliableTask, bind=True, inbox="{event_id}")
def apply_event(self: ReliableTask, event_id: str, amount: int, hold: float = 0.0, kill: str = "") -> str:
    """Consume an event: its id (not the task id) is what the inbox deduplicates on."""
    return _effect(self, event_id, amount, hold, kill)


@app.task(base=ReliableTask, bind=True, inbox=True)
def apply_message(self: ReliableTask, amount: int, hold: float = 0.0, kill: str = "") -> str:
    """Consume a message whose id is the task id (what the outbox publishes)."""
    return _effect(self, self.request.id, amount, hold, kill)
