"""Summaries of repetitions and the Markdown tables the runner prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .measure import Rep


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def median_rate(reps: Sequence[Rep]) -> float:
    """Median tasks/s over repetitions."""
    return statistics.median(r.tasks_per_s for r in reps)


def cycle_rate(reps: Sequence[Rep]) -> float:
    """Noise-robust tasks/s: worker processes / median gap between task starts, median over reps.

    A burst of noise from other tenants stretches a few gaps, which moves the mean
    (the wall-clock rate) a lot and the median little.
    """
    return statistics.median(r.procs / statistics.median(r.cycle_ms) * 1000 for r in reps)


def pooled(reps: Sequence[Rep], attr: str) -> list[float]:
    """Every per-task sample of ``attr`` from all ``reps``."""
    return [v for r in reps for v in getattr(r, attr)]


def server_breakdown(reps: Sequence[Rep]) -> str:
    """``total 7 (evalsha 2, get 2, ...)``: commandstats calls per task, median over reps.

    Redis counts the commands a Lua script runs as calls too, and the workers' pump
    polls in the background (a few calls per second), so this is above the commands sent.
    """
    names = sorted({k for r in reps for k in r.server_calls})
    per = {k: statistics.median(r.server_calls.get(k, 0) / r.n for r in reps) for k in names}
    total = statistics.median(sum(r.server_calls.values()) / r.n for r in reps)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01)
    return f"{total:.2f} ({parts})" if parts else f"{total:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def per_task(counts: dict[str, int], name: str) -> float:
    """``counts[name]`` divided by the tasks counted."""
    tasks = counts.get("tasks", 0)
    return counts.get(name, 0) / tasks if tasks else float("nan")


def breakdown(counts: dict[str, int]) -> str:
    """``EVALSHA 2, EXISTS 1`` per task from exact counts."""
    tasks = counts.get("tasks", 0) or 1
    parts = [(k.split(":", 1)[1], v / tasks) for k, v in sorted(counts.items()) if k.startswith("redis_cmd:")]
    return ", ".join(f"{k} {v:g}" for k, v in parts) or "none"
