"""Circuit breakers, global rate limits and bulkheads of an app, as ``reliable status`` shows them.

Each reads the shared state in Redis through the status client (short timeouts); an
error in one breaker, meter or bulkhead is shown in its row and does not hide the others.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..breaker.breaker import CircuitBreaker
from ..bulkhead.bulkhead import Bulkhead
from ..rate_guard import intervals
from ..ratelimit.base import limiter_key
from .probe import guarded

if TYPE_CHECKING:
    from redis import Redis

    from ..config import ReliableConfig


def _tasks_with(tasks: Mapping[str, Any], attr: str) -> list[tuple[str, Any]]:
    return [(name, spec) for name, task in sorted(tasks.items()) if (spec := getattr(task, attr, None)) is not None]


def breakers(tasks: Mapping[str, Any], cfg: ReliableConfig, client: Redis, secrets: Iterable[str]) -> dict[str, Any]:
    """Every breaker named in ``reliable_circuit_breakers`` or used by a task, with its state.

    Returns:
        breaker name to ``{"state", "failures", "calls", "consecutive_failures",
        "retry_after", "since", "generation", "tasks"}`` (or ``{"unavailable": ...}``).
    """
    objects: dict[str, CircuitBreaker | None] = dict.fromkeys(cfg.circuit_breakers)
    users: dict[str, list[str]] = {name: [] for name in cfg.circuit_breakers}
    for task, spec in _tasks_with(tasks, "_reliable_breaker"):
        objects.setdefault(spec.name, spec.breaker)
        users.setdefault(spec.name, []).append(task)
    report: dict[str, Any] = {}
    for name in sorted(objects):
        given = objects[name]

        def read(name: str = name, given: CircuitBreaker | None = given) -> dict[str, Any]:
            breaker = given or CircuitBreaker(name, client, prefix=cfg.key_prefix, **cfg.circuit_breakers.get(name, {}))
            snap = breaker.state()
            return {
                "state": snap.state.value,
                "failures": snap.failures,
                "calls": snap.calls,
                "consecutive_failures": snap.consecutive_failures,
                "retry_after": snap.retry_after,
                "since": snap.since,
                "generation": snap.generation,
            }

        row: dict[str, Any] = guarded(read, secrets)
        row["tasks"] = users[name]
        report[name] = row
    return report


def _source(builder: Any) -> str | None:
    if builder is None:
        return None
    source = builder.source
    return source if isinstance(source, str) else getattr(source, "__qualname__", repr(source))


def rate_limits(tasks: Mapping[str, Any], cfg: ReliableConfig, client: Redis, secrets: Iterable[str]) -> dict[str, Any]:
    """Each task with ``global_rate_limit``: its limits, key template and, for one meter, its backlog.

    ``backlog_seconds`` is how far the meter's next free instant lies ahead of now (0:
    the next call runs at once); it is read only when every call shares one meter (no
    ``rate_limit_key`` or one without fields, and no per-call tier).

    Returns:
        task name to ``{"limits", "key", "tier", "on_publish", "backlog_seconds"}``.
    """
    report: dict[str, Any] = {}
    for name, spec in _tasks_with(tasks, "_reliable_rate"):
        row: dict[str, Any] = {
            "limits": {tier or "*": str(limit) for tier, limit in spec.limits.items()},
            "key": _source(spec.key) or name,
            "tier": _source(spec.tier) or spec.default_tier,
            "on_publish": spec.on_publish,
            "backlog_seconds": None,
        }
        key = _fixed_key(spec.key, name)
        if key is not None and spec.tier is None:
            tier = spec.default_tier or ""
            limit = spec.limits[tier]
            meter = limiter_key(cfg.key_prefix, f"task:{tier}" if tier else "task", key)
            row["backlog_seconds"] = guarded(functools.partial(_backlog, client, meter, limit), secrets)
        report[name] = row
    return report


def _fixed_key(builder: Any, task_name: str) -> str | None:
    """The one meter key of every call (the task name, or a template without fields), else ``None``."""
    if builder is None:
        return task_name
    source = builder.source
    return source if isinstance(source, str) and "{" not in source and "}" not in source else None


def _backlog(client: Redis, meter: str, limit: Any) -> float:
    pipe = client.pipeline(transaction=False)
    pipe.get(meter)
    pipe.time()
    tat, (seconds, micros) = pipe.execute()
    if tat is None:
        return 0.0
    interval_us, burst = intervals(limit)
    now_us = int(seconds) * 1_000_000 + int(micros)
    return round(max(int(tat) - burst * interval_us - now_us, 0) / 1_000_000, 3)


def _in_use(bulkhead: Bulkhead[Any]) -> int:
    return int(bulkhead.in_use())


def bulkheads(tasks: Mapping[str, Any], cfg: ReliableConfig, client: Redis, secrets: Iterable[str]) -> dict[str, Any]:
    """Every tier of ``reliable_bulkheads`` and every Bulkhead object a task uses: size and slots in use.

    Returns:
        bulkhead name to ``{"size", "in_use", "tasks"}`` (``in_use`` may be ``{"unavailable": ...}``).
    """
    found: dict[str, Bulkhead[Any]] = {}
    users: dict[str, list[str]] = {tier: [] for tier in cfg.bulkheads}
    lease = cfg.bulkhead_lease_ms / 1000
    for tier, size in cfg.bulkheads.items():
        found[tier] = Bulkhead(tier, size, lease=lease, client=client, prefix=cfg.key_prefix)
    for task, spec in _tasks_with(tasks, "_reliable_bulkhead"):
        name = spec.tier if spec.bulkhead is None else spec.bulkhead.name
        if name is None:
            continue  # max_queue_depth only
        if spec.bulkhead is not None:
            found.setdefault(name, spec.bulkhead)
        users.setdefault(name, []).append(task)
    report: dict[str, Any] = {}
    for name in sorted(found):
        bulkhead = found[name]
        in_use = guarded(functools.partial(_in_use, bulkhead), secrets)
        report[name] = {"size": bulkhead.size, "in_use": in_use, "tasks": users.get(name, [])}
    return report
