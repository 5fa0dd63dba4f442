"""The screen of ``reliable status`` and the lines of ``reliable health``, from their reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

#: Width of the first column.
LABEL = 14


def _down(value: Any) -> str | None:
    if isinstance(value, dict) and set(value) == {"unavailable"}:
        return f"unavailable: {value['unavailable']}"
    return None


def _seconds(value: Any) -> str:
    return _down(value) or ("-" if value is None else f"{value:.1f}s")


def _breaker(name: str, row: dict[str, Any]) -> str:
    users = f"  tasks: {', '.join(row['tasks'])}" if row.get("tasks") else ""
    down = _down({k: v for k, v in row.items() if k != "tasks"})
    if down:
        return f"{name:22} {down}{users}"
    streak = row["consecutive_failures"]
    text = f"{name:22} {row['state']:9} {streak} consecutive failure{'' if streak == 1 else 's'}"
    if row["calls"]:
        text += f", {row['failures']}/{row['calls']} failed in window"
    if row["state"] == "open":
        text += f", probes in {_seconds(row['retry_after'])}"
    return text + users


def _rate(name: str, row: dict[str, Any]) -> str:
    limits = ", ".join(v if k == "*" else f"{k}: {v}" for k, v in row["limits"].items())
    text = f"{name:34} {limits}  key {row['key']}"
    if row.get("tier"):
        text += f"  tier {row['tier']}"
    if row["backlog_seconds"] is not None:
        text += f"  backlog {_seconds(row['backlog_seconds'])}"
    return text + ("  (shaped at publish)" if row["on_publish"] else "")


def _bulkhead(name: str, row: dict[str, Any]) -> str:
    used = _down(row["in_use"]) or f"{row['in_use']}/{row['size']} in use"
    return f"{name:22} {used}"


def _table(title: str, value: Any, line: Callable[[str, Any], str], empty: str = "none") -> Iterator[str]:
    down = _down(value)
    if down or not value:
        yield f"{title:{LABEL}} {down or empty}"
        return
    yield title
    for name, row in value.items():
        yield "  " + line(name, row)


def _locks(value: Any) -> Iterator[str]:
    down = _down(value)
    if down:
        yield f"{'locks':{LABEL}} {down}"
        return
    total = f"{value['total']}{'' if value['complete'] else '+'}"
    shown = f", first {len(value['locks'])} shown" if value["total"] > len(value["locks"]) else ""
    yield f"{'locks':{LABEL}} {total} held{shown}"
    for lock in value["locks"]:
        yield f"  {lock['name']:32} holder {lock['holder']}  ttl {_seconds(lock['ttl_seconds'])}"


def _deferred(value: Any) -> str:
    down = _down(value)
    if down:
        return down
    text = f"due {value['due']}, in flight {value['inflight']}, broken {value['broken']}"
    if value.get("overdue_seconds"):
        text += f"; earliest due {_seconds(value['overdue_seconds'])} ago"
    elif value.get("next_due_seconds") is not None:
        text += f"; next due in {_seconds(value['next_due_seconds'])}"
    if value.get("reasons"):
        text += "; reasons: " + ", ".join(f"{k} {v}" for k, v in value["reasons"].items())
    return text


def _dead_letters(value: Any) -> str:
    if value is None:
        return "no table (run `celery -A proj reliable migrate`)"
    down = _down(value)
    if down:
        return down
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(value["by_reason"].items()))
    return f"{value['total']}" + (f" ({reasons})" if reasons else "")


def _outbox(value: Any) -> str:
    if value is None:
        return "no table (run `celery -A proj reliable migrate`)"
    return _down(value) or f"pending {value['pending']}, dead {value['dead']}, lag {value['lag_seconds']:.1f}s"


def _migrations(value: Any) -> str:
    down = _down(value)
    if down:
        return down
    at = "at head" if value["current"] == value["head"] else f"BEHIND: head is {value['head']}"
    return f"{value['current'] or 'none'} ({at})"


def render_text(report: dict[str, Any]) -> list[str]:
    """The lines of the status screen."""
    lines = [f"{'redis':{LABEL}} {report['redis']}", f"{'database':{LABEL}} {report['database'] or 'not configured'}"]
    if "task_modules" in report:
        lines.append(f"{'task modules':{LABEL}} {_down(report['task_modules'])}")
    if "migrations" in report:
        lines.append(f"{'migrations':{LABEL}} {_migrations(report['migrations'])}")
    if report.get("redis_warm") is not None:
        warm = _down(report["redis_warm"]) or ("yes" if report["redis_warm"] else "no (workers consult the database)")
        lines.append(f"{'redis warm':{LABEL}} {warm}")
    lines += _table("breakers", report["breakers"], _breaker)
    lines += _table("rate limits", report["rate_limits"], _rate)
    lines += _table("bulkheads", report["bulkheads"], _bulkhead)
    lines += _locks(report["locks"])
    lines.append(f"{'deferred':{LABEL}} {_deferred(report['deferred'])}")
    lines += _table("queues", report["queues"], lambda name, depth: f"{name:34} {_down(depth) or depth}")
    if "dead_letters" in report:
        lines.append(f"{'dead letters':{LABEL}} {_dead_letters(report['dead_letters'])}")
        lines.append(f"{'outbox':{LABEL}} {_outbox(report['outbox'])}")
        records = report["idempotency_records"]
        count = _down(records) or ("no table" if records is None else f"{records} records")
        lines.append(f"{'idempotency':{LABEL}} {count}")
    return lines
