"""Count what happened and print the verdict: one payment per order, none twice, none lost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine


@dataclass
class Outcome:
    """Everything the demo counted. ``ok`` is the exactly-once verdict."""

    orders: int
    published: int
    double_clicks: int
    redeliveries: int
    deliveries: int
    bodies: int
    kills: list[str]
    killed: int
    effects: int
    duplicated: int
    lost: int
    unknown: int
    charged_cents: int
    expected_cents: int
    failed_results: int
    pending_results: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Effects == orders, none duplicated, none lost, the money adds up, no task failed."""
        return (
            self.effects == self.orders and self.duplicated == 0 and self.lost == 0 and self.unknown == 0
            and self.charged_cents == self.expected_cents and self.failed_results == 0
            and self.pending_results == 0
        )


def count_effects(
    engine: Engine, payments: Table, run_id: str, expected: dict[str, int]
) -> tuple[int, int, int, int, int]:
    """Read the payments of ``run_id`` back.

    Args:
        engine: the database the workers wrote to.
        payments: the demo's payments table.
        run_id: this run's id.
        expected: amount in cents per order id that was submitted.

    Returns:
        ``(rows, duplicated, lost, unknown, charged_cents)``: duplicated counts rows
        beyond the first of an order, lost counts orders without a row, unknown counts
        rows for orders nobody submitted.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            select(payments.c.order_id, payments.c.amount_cents).where(payments.c.run_id == run_id)
        ).all()
    per_order = Counter(order_id for order_id, _ in rows)
    duplicated = sum(n - 1 for n in per_order.values() if n > 1)
    lost = sum(1 for order_id in expected if order_id not in per_order)
    unknown = sum(n for order_id, n in per_order.items() if order_id not in expected)
    return len(rows), duplicated, lost, unknown, sum(amount for _, amount in rows)


def render(out: Outcome) -> str:
    """The table the demo prints."""
    lines = [
        ("orders submitted", f"{out.orders}", ""),
        ("messages published", f"{out.published}",
         f"{out.double_clicks} double-clicks, {out.redeliveries} re-sent with the same task id"),
        ("deliveries to workers", f"{out.deliveries}", "incl. redeliveries after SIGKILLs and deferrals"),
        ("duplicate deliveries", f"{out.deliveries - out.orders}", "every one could have charged twice"),
        ("task bodies started", f"{out.bodies}", "duplicates that got this far were rolled back"),
        ("processes SIGKILLed", f"{out.killed}", "see the faults below"),
        ("effects applied (payment rows)", f"{out.effects}", "want: one per order"),
        ("duplicated effects", f"{out.duplicated}", "want: 0"),
        ("lost orders", f"{out.lost}", "want: 0"),
        ("amount charged", f"{out.charged_cents / 100:,.2f}", f"expected {out.expected_cents / 100:,.2f}"),
        ("task results not SUCCESS", f"{out.failed_results + out.pending_results}",
         f"{out.failed_results} failed, {out.pending_results} never finished"),
    ]
    width = max(len(label) for label, _, _ in lines)
    body = [f"  {label:<{width}}  {value:>9}  {note}".rstrip() for label, value, note in lines]
    rule = "  " + "-" * (width + 40)
    verdict = "EXACTLY ONCE: every order charged once" if out.ok else "GUARANTEE VIOLATED"
    kills = [f"  - {k}" for k in out.kills]
    notes = [f"  ! {n}" for n in out.notes]
    return "\n".join([
        "", rule, *body, rule, f"  {verdict} ({out.seconds:.1f} s)", "",
        *(["  faults injected:", *kills, ""] if kills else []), *notes,
    ])
