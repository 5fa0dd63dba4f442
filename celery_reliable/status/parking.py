"""The deferred set (parking lot) and the held locks, as ``reliable status`` shows them."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

#: Parked entries read to count the reasons they were parked for.
REASON_SAMPLE = 50
#: Held locks listed (all are counted, up to :data:`LOCKS_COUNTED`).
LOCKS_SHOWN = 100
#: Lock keys counted before the scan stops (the total is then shown as at least this).
LOCKS_COUNTED = 10_000
#: Keys asked for per SCAN step.
SCAN_COUNT = 1000


def deferred(client: Redis, prefix: str) -> dict[str, Any]:
    """Entries parked, in flight and broken; how late the earliest due entry is; reasons of a sample.

    Returns:
        ``{"due", "inflight", "broken", "overdue_seconds", "next_due_seconds", "reasons", "sampled"}``:
        ``overdue_seconds`` is how long the earliest entry has been due without being moved
        (growing while no pump runs), ``next_due_seconds`` how long until it is due; both
        ``None`` when nothing is parked.
    """
    base = f"{prefix}:{{deferred}}"
    due_key = f"{base}:due"
    pipe = client.pipeline(transaction=False)
    pipe.zcard(due_key)
    pipe.zcard(f"{base}:inflight")
    pipe.zcard(f"{base}:broken")
    pipe.zrange(due_key, 0, 0, withscores=True)
    pipe.zrange(due_key, 0, REASON_SAMPLE - 1)
    pipe.time()
    due, inflight, broken, first, sample, (seconds, micros) = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    overdue = next_due = None
    if first:
        gap = (now_ms - float(first[0][1])) / 1000
        overdue, next_due = round(max(gap, 0.0), 3), round(max(-gap, 0.0), 3)
    reasons: Counter[str] = Counter()
    for entry in sample:
        try:
            reasons[str(json.loads(entry).get("reason") or "?")] += 1
        except (ValueError, AttributeError):
            reasons["undecodable"] += 1
    return {
        "due": int(due),
        "inflight": int(inflight),
        "broken": int(broken),
        "overdue_seconds": overdue,
        "next_due_seconds": next_due,
        "reasons": dict(sorted(reasons.items())),
        "sampled": len(sample),
    }


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def held_locks(client: Redis, prefix: str) -> dict[str, Any]:
    """The Redis locks held now (``<prefix>:lock:{name}``): name, holder and lease left.

    Returns:
        ``{"total", "complete", "locks": [{"name", "holder", "ttl_seconds"}, ...]}``, at
        most :data:`LOCKS_SHOWN` locks sorted by name; ``complete`` is false when the scan
        stopped at :data:`LOCKS_COUNTED` keys. A name written as its SHA-256 (it held a
        brace) shows as ``#<sha256>``. Redlock nodes and PostgreSQL advisory locks are not
        listed.
    """
    start = f"{prefix}:lock:{{"  # as locks.names.redis_key writes them
    keys: list[bytes] = []
    complete = True
    for key in client.scan_iter(match=_glob_escape(start) + "*}", count=SCAN_COUNT):
        if len(keys) >= LOCKS_COUNTED:
            complete = False
            break
        keys.append(key)
    shown = sorted(keys)[:LOCKS_SHOWN]
    pipe = client.pipeline(transaction=False)
    for key in shown:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute(raise_on_error=False) if shown else []
    locks = []
    for i, key in enumerate(shown):
        holder, pttl = replies[2 * i], replies[2 * i + 1]
        if not isinstance(holder, bytes) or not isinstance(pttl, int) or pttl == -2:
            continue  # released meanwhile, or not a lock's owner key
        locks.append(
            {
                "name": key.decode("utf-8", "replace")[len(start) : -1],
                "holder": holder.decode("utf-8", "replace"),
                "ttl_seconds": round(pttl / 1000, 3) if pttl >= 0 else None,
            }
        )
    return {"total": len(keys), "complete": complete, "locks": locks}
