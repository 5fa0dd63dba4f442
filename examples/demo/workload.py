"""The payments workload: orders, double-clicks, and messages re-sent with the same task id."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Message:
    """One publish of the charge task. ``kind``: first, double-click or re-sent."""

    task_id: str
    order_id: str
    amount_cents: int
    kind: str


def workload(run_id: str, orders: int, rng: random.Random) -> tuple[list[Message], dict[str, int]]:
    """Every order 2-3 times (double-clicks, close together), ~15% re-sent later with the same id.

    Returns:
        the messages in publishing order, and the amount in cents expected per order.
    """
    expected: dict[str, int] = {}
    timeline: list[tuple[float, Message]] = []
    for i in range(orders):
        order_id = f"{run_id}-order-{i:04d}"
        expected[order_id] = rng.randint(500, 25_000)
        for click in range(rng.choice((2, 2, 3))):
            msg = Message(str(uuid.uuid4()), order_id, expected[order_id], "first" if click == 0 else "double-click")
            timeline.append((i + rng.uniform(0, 4), msg))
            if rng.random() < 0.15:  # what a broker redelivery looks like: same task id again
                timeline.append((i + rng.uniform(10, 80), replace(msg, kind="re-sent")))
    timeline.sort(key=lambda item: item[0])
    return [msg for _, msg in timeline], expected
