"""The audit: what each phase submitted, what happened to it, and which guarantees held.

Every number comes from a count the demo reads back after the fact: the ledger (a Redis
the tasks write to, which never deduplicates), the demo's tables, the dead-letter store,
the workers' Prometheus counters and celery-reliable's status report. Nothing is assumed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine


@dataclass
class Check:
    """One guarantee and whether it held, with the numbers that show it."""

    text: str
    held: bool


@dataclass
class PhaseAudit:
    """The counts of one phase. ``lost`` and ``double`` must be 0; every check must hold."""

    number: int
    title: str
    tasks: set[str]
    submitted: int = 0
    effects: int = 0
    suppressed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    lost: int = 0
    double: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    checks: list[Check] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def check(self, text: str, held: bool) -> bool:
        """Record a guarantee; returns whether it held."""
        self.checks.append(Check(text, held))
        return held

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, every check held, and the phase's fault fired."""
        return self.lost == 0 and self.double == 0 and bool(self.faults) and all(c.held for c in self.checks)


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


#: What the columns count.
LEGEND = (
    "submitted: messages published, duplicates included; effects: what the work left (payment rows, report builds,",
    "dependency calls, receipts, imports); dups suppressed: submitted work that did not repeat an effect; deferred:",
    "deliveries parked instead of run (no worker slot held, no retry spent); retried: bodies run again after a",
    "failure; lost: work with neither its effect nor a dead letter.",
    "",
)
COLUMNS = ("submitted", "effects", "dups suppressed", "deferred", "dead-lettered", "retried", "lost")


def render(phases: list[PhaseAudit], seconds: float, extra: list[str]) -> tuple[str, bool]:
    """The audit table and the guarantees; returns the text and whether everything held."""
    width = max(len(f"{p.number} {p.title}") for p in phases) + 2

    def row(label: str, values: list[int]) -> str:
        cells = "".join(f"{v:>{len(c) + 2}}" for v, c in zip(values, COLUMNS, strict=True))
        return f"  {label:<{width}}{cells}"

    def values(p: PhaseAudit) -> list[int]:
        return [p.submitted, p.effects, p.suppressed, sum(p.deferred.values()), p.dead_lettered, p.retried, p.lost]

    header = f"  {'AUDIT':<{width}}" + "".join(f"{c:>{len(c) + 2}}" for c in COLUMNS)
    rule = "  " + "-" * (len(header) - 2)
    lines = ["", header, rule]
    lines += [row(f"{p.number} {p.title}", values(p)) for p in phases]
    totals = [sum(col) for col in zip(*(values(p) for p in phases), strict=True)]
    lines += [rule, row("total", totals), ""]
    lines += [f"  {line}".rstrip() for line in LEGEND]
    reasons: Counter[str] = Counter()
    for p in phases:
        reasons.update(p.deferred)
    lines.append(
        "  deferred by reason (workers' reliable_deferred_total): "
        + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none")
    )
    lines += [f"  {line}" for line in extra]
    lines += ["", "  guarantees:"]
    for p in phases:
        for c in p.checks:
            lines.append(f"    [{'held' if c.held else 'FAIL'}] {p.number}: {c.text}")
        if not p.faults:
            lines.append(f"    [FAIL] {p.number}: the phase's fault did not fire")
    lost = sum(p.lost for p in phases)
    double = sum(p.double for p in phases)
    ok = all(p.ok for p in phases)
    verdict = "ALL GUARANTEES HELD" if ok else "GUARANTEE VIOLATED"
    lines += [
        "",
        f"  {verdict}: lost = {lost}, double effects = {double}, "
        + ("limits respected" if ok else "see the FAIL lines above")
        + f" ({seconds:.1f} s)",
        "",
    ]
    return "\n".join(lines), ok
