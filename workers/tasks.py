"""Example tasks, one per tier, each showing one way to use ``ReliableTask``.

Publish them from the web application with ``charge.delay(order_id="o-1", amount_cents=4200)``;
routing to the tier's queue is in :mod:`workers.app`.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from celery_reliable import ReliableTask

from .app import app
from .models import Payment

logger = logging.getLogger(__name__)


@app.task(base=ReliableTask, bind=True, idempotency_key="charge:{order_id}")
def charge(self: ReliableTask, order_id: str, amount_cents: int, currency: str = "EUR") -> dict[str, Any]:
    """Critical tier. A database effect, exactly once per order.

    The payment row and the idempotency record commit in one transaction, so however
    often the order is submitted or redelivered, and wherever a worker is killed, one
    row is written and every duplicate gets this return value back.
    """
    with self.transaction() as session:
        session.add(Payment(order_id=order_id, amount_cents=amount_cents, currency=currency,
                            task_id=self.request.id))
    return {"order_id": order_id, "amount_cents": amount_cents, "currency": currency}


@app.task(base=ReliableTask, bind=True, idempotency_key="receipt:{order_id}")
def send_receipt(self: ReliableTask, order_id: str, email: str) -> str:
    """Standard tier. An effect outside our database, made safe downstream.

    The body runs to success at most once per key, but a worker can die after the
    e-mail left and before the result was stored. Passing the stable
    ``self.request.idempotency_key`` as the provider's idempotency key closes that gap.
    """
    key = self.request.idempotency_key
    logger.info("receipt for %s to %s (Idempotency-Key: %s)", order_id, email, key)
    return str(key)


@app.task(base=ReliableTask)
def refresh_report(day: str | None = None) -> str:
    """Optional tier. No options: behaves exactly like a plain Celery task."""
    day = day or date.today().isoformat()
    logger.info("refreshing the report of %s", day)
    return day
