"""Global rate limits in the worker and at publish time: one meter per key, shared through Redis.

A task's limit is a GCRA meter in Redis per key (``<prefix>:rl:{task:<key>}``). Admission
is one script (``ratelimit_gcra_schedule.lua``) on the server's clock, run when the body
is about to start:

- the meter admits the call: the body runs (the meter counts starts, so the limit holds
  on what the protected dependency sees);
- it does not: the task is parked in the deferred set until its own instant on the
  meter's schedule, holding no worker slot and spending no retry (event
  ``task-rate-limited``). Refused tasks get distinct, evenly spaced instants, so they come
  back one by one rather than as a herd refused again. One that comes back late and
  finds its instant taken is scheduled again; the meter still holds.

An admitted call carries its admission in the ``reliable_rate_slot`` header while it is
parked for another reason (a busy lock), so it is not counted twice; the header is tied
to the attempt (a retry is admitted anew). With ``rate_limit_on_publish``,
``apply_async`` asks the meter instead, and parks the task until the meter admits it, so
workers only receive tasks they may run.

When Redis cannot be reached, ``reliable_rate_limit_on_redis_error`` decides: ``"defer"``
(the default: the task is sent back to its queue with a short countdown through the
broker, or returned to the broker unacknowledged) or ``"allow"`` (it runs unlimited).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject
from redis.exceptions import RedisError

from .errors import BackendUnavailable
from .events import emit
from .ratelimit.base import limiter_key
from .scripts import script_for

if TYPE_CHECKING:
    from celery.app.task import Context

    from .rate_option import RateSpec
    from .ratelimit.limit import Limit
    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: The message header carrying the slot a task was given: ``{"key", "retries", "at_us"}``.
SLOT_HEADER = "reliable_rate_slot"
#: Seconds a task waits before it is tried again while Redis cannot be reached.
_REDIS_DOWN_DELAY = 2.0


def take(client: Any, meter_key: str, limit: Limit, cost: int) -> tuple[bool, int, int]:
    """Admit a call of ``cost`` on the meter at ``meter_key``, or schedule it; one round trip.

    Returns:
        ``(admitted, wait_us, now_us)``: whether the call may run now; if not, microseconds
        until its own instant to come back; and the server's time.

    Raises:
        redis.exceptions.RedisError: Redis could not be reached or refused the script.
    """
    period_us = round(limit.period_s * 1_000_000)
    interval_us = -(-period_us // limit.rate)
    burst = limit.burst or limit.rate
    admitted, wait_us, now_us = script_for(client, "ratelimit_gcra_schedule")(
        keys=[meter_key, f"{meter_key}:schedule"], args=[interval_us, burst, cost]
    )
    return admitted == 1, (0 if admitted == 1 else max(int(wait_us), 1)), int(now_us)


def slot_of(req: Context) -> dict[str, Any] | None:
    """The slot this delivery already holds, if its message carries one for this attempt."""
    found = getattr(req, SLOT_HEADER, None)
    if found is None and isinstance(getattr(req, "headers", None), dict):
        found = req.headers.get(SLOT_HEADER)
    if isinstance(found, dict) and found.get("retries") == int(req.retries or 0):
        return found
    return None


def admit(task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime) -> None:
    """Let this delivery run now, or park it until its instant on the schedule (raises ``Ignore``).

    Sets ``req.rate_limit_slot`` (``{"key", "retries", "at_us"}``, ``at_us`` the server
    time of the admission in microseconds) for the body and for later deferrals of this
    attempt.
    """
    spec: RateSpec | None = task._reliable_rate
    if spec is None or req.is_eager:
        return
    held = slot_of(req)
    if held is not None:
        req.rate_limit_slot = held
        return
    meter, key, limit, cost = spec.call(task.name, args, kwargs)
    try:
        admitted, wait_us, now_us = take(rt.redis, limiter_key(rt.config.key_prefix, meter, key), limit, cost)
    except RedisError as exc:
        if rt.config.rate_limit_on_redis_error == "allow":
            logger.warning("%s[%s]: rate limit not checked, Redis unreachable (%r); running", task.name, req.id, exc)
            return
        _defer_without_redis(task, req, args, kwargs, rt, exc)
    if admitted:
        req.rate_limit_slot = {"key": key, "retries": int(req.retries or 0), "at_us": now_us}
        return
    from .execution import defer

    defer(
        task,
        req,
        args,
        kwargs,
        rt,
        math.ceil(wait_us / 1000),
        reason="rate-limited",
        event="task-rate-limited",
        jitter=False,
        key=key,
        limit=str(limit),
    )


def shape(task: Task, args: Any, kwargs: Any, options: dict[str, Any], rt: Runtime) -> int:
    """Ask the meter about a call being published; returns milliseconds to park it for (0: send now).

    An admitted call carries its admission in the message's headers, so the worker runs
    it without asking again; a refused one is parked until its instant, and asks again
    when the pump publishes it. When Redis cannot be reached nothing is taken (returns 0)
    and the worker decides instead.
    """
    spec: RateSpec | None = task._reliable_rate
    assert spec is not None
    retries = int(options.get("retries") or 0)
    headers = dict(options.get("headers") or {})
    held = headers.get(SLOT_HEADER)
    if isinstance(held, dict) and held.get("retries") == retries:
        return 0  # already holds a slot (a parked task coming back through the pump)
    meter, key, limit, cost = spec.call(task.name, tuple(args or ()), dict(kwargs or {}))
    try:
        admitted, wait_us, now_us = take(rt.redis, limiter_key(rt.config.key_prefix, meter, key), limit, cost)
    except RedisError as exc:
        logger.warning("%s: publish-time rate shaping skipped, Redis unreachable (%r)", task.name, exc)
        return 0
    if not admitted:
        return math.ceil(wait_us / 1000)
    headers[SLOT_HEADER] = {"key": key, "retries": retries, "at_us": now_us}
    options["headers"] = headers
    return 0


def _defer_without_redis(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, exc: Exception
) -> NoReturn:
    """Fail closed with Redis down: send the task back through the broker, or leave it unacknowledged."""
    delay = _REDIS_DOWN_DELAY * (1 + random.random())
    sig = task.signature_from_request(req, args, kwargs, countdown=delay)
    try:
        Task.apply_async(task, sig.args, sig.kwargs, **sig.options)  # not ReliableTask's: it would park in Redis
    except Exception as publish_error:
        if req.acks_late:
            time.sleep(min(delay, 1.0))  # Redis and the broker are both away: do not spin on requeues
            raise Reject(publish_error, requeue=True) from exc
        message = f"cannot check the rate limit of {task.name} nor requeue it: {exc!r}"
        raise BackendUnavailable("redis", message) from exc
    emit(task, "task-rate-limited", rt.config.send_events, reason="redis-unavailable", delay_ms=round(delay * 1000))
    raise Ignore()
