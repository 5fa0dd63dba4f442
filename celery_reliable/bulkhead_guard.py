"""The ``bulkhead`` options of ReliableTask: a cluster-wide cap on running bodies, and load shedding.

``bulkhead="critical"`` takes a slot of the tier's bulkhead (sizes in
``reliable_bulkheads``) before the body runs and gives it back after; the slot is a lease
in Redis renewed by the heartbeat, so a SIGKILLed worker's slot comes back after
``reliable_bulkhead_lease``. When every slot is taken, ``bulkhead_on_full`` decides:
``"defer"`` (park the task until a slot is likely free: no worker slot held, no retry
spent, event ``task-bulkhead-full``), ``"reject"`` (dead-letter it as ``bulkhead_full``) or
a fallback callable whose answer becomes the task's result.

``max_queue_depth=N`` sheds load at the door: ``apply_async`` raises ``QueueFull`` when
the task's queue already holds N messages (the depth is read at most once per
``reliable_queue_depth_cache`` per process and queue).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore

from .admission import Ask, Release
from .breaker_guard import Answer
from .bulkhead.bulkhead import Bulkhead
from .bulkhead.policy import check_on_full
from .bulkhead.tiers import TIER_NAME
from .errors import BulkheadFull, ConfigurationError
from .events import emit
from .heartbeat import Lease, heartbeat

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

    from .bulkhead.slot import Slot
    from .config import ReliableConfig
    from .runtime import Runtime

#: The bulkhead options of ReliableTask.
BULKHEAD_OPTIONS = ("bulkhead", "bulkhead_on_full", "max_queue_depth")

_HOST = socket.gethostname()


@dataclass(frozen=True)
class BulkheadSpec:
    """A task's bulkhead options, checked."""

    tier: str | None  # a tier of reliable_bulkheads, or None with an object
    bulkhead: Bulkhead[Any] | None
    on_full: str | Callable[..., Any]
    max_queue_depth: int | None


@dataclass
class Held:
    """A slot this execution holds, and its heartbeat lease."""

    bulkhead: Bulkhead[Any]
    slot: Slot
    lease: Lease


def compile_bulkhead(cls: type) -> BulkheadSpec | None:
    """Build the bulkhead spec of a task class from its options.

    Raises:
        ConfigurationError: for a wrong value, or ``bulkhead_on_full`` without a bulkhead.
    """
    value = getattr(cls, "bulkhead", None)
    on_full = getattr(cls, "bulkhead_on_full", None)
    depth = getattr(cls, "max_queue_depth", None)
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        raise ConfigurationError("max_queue_depth", f"expected a positive int, got {depth!r}")
    if value is None:
        if on_full is not None:
            raise ConfigurationError("bulkhead_on_full", "has no effect without bulkhead=...")
        return None if depth is None else BulkheadSpec(None, None, "defer", depth)
    checked_on_full = check_on_full("defer" if on_full is None else on_full)
    if isinstance(value, Bulkhead):
        if value.is_async:
            raise ConfigurationError("bulkhead", "a task's Bulkhead needs a redis.Redis client, not redis.asyncio")
        return BulkheadSpec(None, value, checked_on_full, depth)
    if isinstance(value, str) and TIER_NAME.fullmatch(value):
        return BulkheadSpec(value, None, checked_on_full, depth)
    got = f"{type(value).__name__} {value!r}"
    raise ConfigurationError("bulkhead", f"expected a tier name of reliable_bulkheads or a Bulkhead(...), got {got}")


def check_tier_known(task_name: str, spec: BulkheadSpec, cfg: ReliableConfig) -> None:
    """Check, when a task is sent, that its bulkhead tier is one of its app's tiers.

    Not when the task is declared: Celery binds a shared task to every app that is
    finalized, and an app that merely imports it need not have its tiers. Workers check
    every task at start (:func:`check_tiers_known`); a producer learns here, before the
    message leaves.

    Raises:
        ConfigurationError: naming the task, its tier and the tiers there are.
    """
    if spec.tier is not None and spec.tier not in cfg.bulkheads:
        raise ConfigurationError(
            "bulkhead",
            f"task {task_name} uses bulkhead={spec.tier!r}, which reliable_bulkheads does not list; "
            f"the tiers are {sorted(cfg.bulkheads)}",
        )


def check_tiers_known(tasks: Mapping[str, Any], cfg: ReliableConfig) -> None:
    """Check, at worker start, that every task's bulkhead tier is in ``reliable_bulkheads``.

    Raises:
        ConfigurationError: naming the task and the tiers there are.
    """
    for name, task in sorted(tasks.items()):
        spec: BulkheadSpec | None = getattr(task, "_reliable_bulkhead", None)
        if spec is not None and spec.tier is not None and spec.tier not in cfg.bulkheads:
            raise ConfigurationError(
                "reliable_bulkheads", f"task {name} uses bulkhead={spec.tier!r}; the tiers are {sorted(cfg.bulkheads)}"
            )


def bulkhead_for(spec: BulkheadSpec, rt: Runtime) -> Bulkhead[Any]:
    """The bulkhead of a spec: the object given, or the app's tier (built once per process)."""
    if spec.bulkhead is not None:
        return spec.bulkhead
    assert spec.tier is not None
    cfg = rt.config
    client = rt.redis
    cache: dict[tuple[int, str], Bulkhead[Any]] = rt.__dict__.setdefault("_bulkheads", {})
    found = cache.get((id(client), spec.tier))
    if found is None:
        size = cfg.bulkheads.get(spec.tier)
        if size is None:
            tiers = sorted(cfg.bulkheads)
            raise ConfigurationError("reliable_bulkheads", f"no tier {spec.tier!r}; the tiers are {tiers}")
        found = Bulkhead(spec.tier, size, lease=cfg.bulkhead_lease_ms / 1000, client=client, prefix=cfg.key_prefix)
        cache[(id(client), spec.tier)] = found
    return found


def owner_of(req: Context) -> str:
    """A unique owner token naming this execution: ``<host>:<pid>:<task id>:<nonce>``."""
    return f"{_HOST}:{os.getpid()}:{req.id}:{uuid.uuid4().hex[:8]}"


def has_slots(task: Task) -> bool:
    """Whether the task takes a bulkhead slot (not only ``max_queue_depth``)."""
    spec: BulkheadSpec | None = task._reliable_bulkhead
    return spec is not None and (spec.tier is not None or spec.bulkhead is not None)


def prepare(task: Task, req: Context, rt: Runtime) -> Ask | None:
    """The bulkhead's question for the admission round trip, or None.

    Only a bulkhead on the app's Redis client joins it (a tier, or an object built on
    that client); others ask on their own.
    """
    spec: BulkheadSpec | None = task._reliable_bulkhead
    if spec is None or not has_slots(task):
        return None
    bulkhead = bulkhead_for(spec, rt)
    if bulkhead.client is not rt.redis:
        return None
    owner = owner_of(req)
    keys, args = bulkhead.acquire_request(owner)
    return Ask("bulkhead", "bulkhead_acquire", keys, args, {"owner": owner})


def take(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, ask: Ask | None = None
) -> Held | Answer | None:
    """Take a slot of the task's bulkhead, or act on a full one.

    ``ask``: the bulkhead's question, answered in the admission round trip; without an
    answer the bulkhead is asked here.

    Returns:
        The slot held (give it back with :func:`give_back`), a fallback's :class:`Answer`,
        or ``None`` when the task has no bulkhead.

    Raises:
        Ignore: parked until a slot is likely free, or dead-lettered (``"reject"``).
        BulkheadFull: an eager call found it full.
    """
    spec: BulkheadSpec | None = task._reliable_bulkhead
    if spec is None or (spec.tier is None and spec.bulkhead is None):
        return None
    bulkhead = bulkhead_for(spec, rt)
    if ask is not None and ask.answered:
        admission = bulkhead.admission_of(ask.state["owner"], ask.take())
    else:  # the same owner as the admission's (a lost reply: re-asking takes no second slot)
        admission = bulkhead.try_acquire(owner_of(req) if ask is None else ask.state["owner"])
    if admission.slot is not None:
        slot = admission.slot
        lease = heartbeat().add(Lease(f"bulkhead:{bulkhead.name}", bulkhead.lease_ms, lambda: bulkhead.renew(slot)))
        return Held(bulkhead, slot, lease)
    fields: dict[str, Any] = {"bulkhead": bulkhead.name, "size": bulkhead.size, "in_use": admission.in_use}
    if callable(spec.on_full):
        emit(task, "task-bulkhead-full", rt.config.send_events, reason="fallback", **fields)
        return Answer(spec.on_full(*args, **kwargs))
    full = BulkheadFull(bulkhead.name, bulkhead.size, admission.retry_after)
    if req.is_eager:
        raise full
    if spec.on_full == "reject":
        from . import failure_guard

        attempt = int(req.retries or 0) + 1
        past = failure_guard.history(req)
        failure_guard.dead_letter(task, req, args, kwargs, full, rt, "bulkhead_full", attempt, past)
        _fail(task, req, full)
        raise Ignore()
    from .execution import defer

    delay_ms = max(round(admission.retry_after * 1000), 50)
    defer(task, req, args, kwargs, rt, delay_ms, reason="bulkhead-full", event="task-bulkhead-full", **fields)


def _fail(task: Task, req: Context, exc: BaseException) -> None:
    """Store a rejected task's failure and call its errbacks, as a failed task would."""
    if task.ignore_result and not req.errbacks:
        return
    try:
        task.backend.mark_as_failure(req.id, exc, request=req, store_result=not task.ignore_result)
    except Exception as error:  # the dead letter holds it; callers may wait on .get()
        logging.getLogger("celery_reliable").warning(
            "%s[%s]: could not store the rejection: %r", task.name, req.id, error
        )


def release_of(held: Held | Answer | None, rt: Runtime) -> Release | None:
    """The slot's give-back for the completion round trip (a bulkhead on the app's Redis), or None."""
    if not isinstance(held, Held) or held.bulkhead.client is not rt.redis:
        return None

    def request() -> tuple[list[str], list[Any]]:
        heartbeat().remove(held.lease)
        return held.bulkhead.release_request(held.slot)

    def then(reply: Any) -> None:
        if isinstance(reply, Exception):
            _not_released(held)
        else:
            held.bulkhead.release_answered(held.slot, reply)

    return Release("bulkhead", "bulkhead_release", request, then)


def give_back(held: Held | None) -> None:
    """Release a slot taken by :func:`take` (a lost slot is only logged by the heartbeat)."""
    if held is None:
        return
    heartbeat().remove(held.lease)
    try:
        held.bulkhead.release(held.slot)
    except Exception:  # the lease expires on its own
        _not_released(held)


def _not_released(held: Held) -> None:
    logging.getLogger("celery_reliable").warning(
        "could not release bulkhead slot of %s; it frees itself after its lease", held.bulkhead.name
    )


def check_depth(task: Task, args: Any, kwargs: Any, options: dict[str, Any], rt: Runtime) -> None:
    """Refuse a publish to a queue already holding ``max_queue_depth`` messages (raises QueueFull)."""
    spec: BulkheadSpec | None = task._reliable_bulkhead
    if spec is None or spec.max_queue_depth is None:
        return
    from .bulkhead.queue_depth import check_queue_depth

    name = _queue_of(task, args, kwargs, options)
    check_queue_depth(task.app, name, spec.max_queue_depth, max_age=rt.config.queue_depth_cache_ms / 1000)


def _queue_of(task: Task, args: Any, kwargs: Any, options: dict[str, Any]) -> str:
    """The queue a publish goes to: the call's ``queue``, else ``task_routes``, else the default queue."""
    queue = options.get("queue")
    if queue is None:
        try:
            routed = task.app.amqp.router.route(dict(options), task.name, args, kwargs)
            queue = routed.get("queue")
        except Exception:  # an unusual router: fall back to the task's own queue
            queue = None
    name = getattr(queue, "name", queue) or getattr(task, "queue", None) or task.app.conf.task_default_queue
    return str(name)
