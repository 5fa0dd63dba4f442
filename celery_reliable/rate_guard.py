"""Global rate limits in the worker and at publish time: one meter per key, shared through Redis.

A task's limit is a GCRA meter in Redis per key (``<prefix>:rl:{task:<key>}``). When a
body is about to start, one script (``ratelimit_gcra_book.lua``) on the server's clock
books the call's instant on the meter:

- the instant is now: the body runs;
- it is later: the task is parked in the deferred set until exactly then, holding no
  worker slot and spending no retry (event ``task-rate-limited``). Each parked task holds
  its own instant, evenly spaced, so parked tasks come back one by one, never as a herd
  refused again. It comes back carrying its booking (the ``reliable_rate_slot`` header)
  and runs without asking again, unless it comes back later than its instant by more
  than the limit's burst of intervals (a backlog held it up): then running at once could
  bunch it with the tasks booked after it, so it books a new instant.

So bodies start at most the limit's count (plus its burst) in any period, and a
dependency called from the body sees the limit. A booking is tied to the task id and
the attempt: a retry, a replayed dead letter and a task parked again for another reason
(a busy lock, an open breaker, a full bulkhead) book anew, so nothing skips the meter by
waiting. With ``rate_limit_on_publish``, ``apply_async`` books instead, and parks the
task until its instant, so workers only receive tasks they may run.

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

from .admission import Ask
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

#: The message header carrying a booked instant: ``{"id", "retries", "key", "at_us", "late_us"}``.
SLOT_HEADER = "reliable_rate_slot"
#: Seconds a task waits before it is tried again while Redis cannot be reached.
_REDIS_DOWN_DELAY = 2.0


def intervals(limit: Limit) -> tuple[int, int]:
    """The meter's emission interval and burst: ``(interval_us, burst)``."""
    period_us = round(limit.period_s * 1_000_000)
    return -(-period_us // limit.rate), limit.burst or limit.rate


def book(client: Any, meter_key: str, limit: Limit, cost: int) -> tuple[int, int]:
    """Book the next instant of the meter at ``meter_key`` for a call of ``cost``; one round trip.

    Returns:
        ``(wait_us, now_us)``: microseconds until the booked instant (0: now) and the
        server's time.

    Raises:
        redis.exceptions.RedisError: Redis could not be reached or refused the script.
    """
    interval_us, burst = intervals(limit)
    wait_us, now_us = script_for(client, "ratelimit_gcra_book")(keys=[meter_key], args=[interval_us, burst, cost])
    return max(int(wait_us), 0), int(now_us)


def booking_of(req: Context) -> dict[str, Any] | None:
    """The booking this delivery carries, if it was made for this task id and attempt."""
    found = getattr(req, SLOT_HEADER, None)
    if found is None and isinstance(getattr(req, "headers", None), dict):
        found = req.headers.get(SLOT_HEADER)
    if isinstance(found, dict) and found.get("id") == req.id and found.get("retries") == int(req.retries or 0):
        return found
    return None


def prepare(task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime) -> Ask | None:
    """The meter's question for this delivery (for the admission round trip), or None.

    A delivery carrying its booking asks whether it is still good (it came back within
    its lateness allowance), and books anew only if not, in the same script.
    """
    spec: RateSpec | None = task._reliable_rate
    if spec is None or req.is_eager:
        return None
    meter, key, limit, cost = spec.call(task.name, args, kwargs)
    interval_us, burst = intervals(limit)
    held = booking_of(req)
    book_args: list[Any] = [interval_us, burst, cost]
    if held is not None:
        book_args += [int(held.get("at_us") or 0), int(held.get("late_us") or 0)]
    state = {"key": key, "limit": limit, "held": held}
    return Ask("rate", "ratelimit_gcra_book", [limiter_key(rt.config.key_prefix, meter, key)], book_args, state)


def admit(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, ask: Ask | None = None
) -> None:
    """Let this delivery run now, or park it until its booked instant (raises ``Ignore``).

    ``ask``: the meter's question, answered in the admission round trip; without an
    answer the meter is asked here (one round trip).

    Sets ``req.rate_limit_slot`` (``{"key", "at_us", ...}``, ``at_us`` the server time of
    the instant the body was admitted for, in microseconds) for the body.
    """
    if ask is None:
        ask = prepare(task, req, args, kwargs, rt)
        if ask is None:
            return
    try:
        reply = ask.take() if ask.answered else script_for(rt.redis, ask.script)(keys=ask.keys, args=ask.args)
    except RedisError as exc:
        if rt.config.rate_limit_on_redis_error == "allow":
            logger.warning("%s[%s]: rate limit not checked, Redis unreachable (%r); running", task.name, req.id, exc)
            return
        _defer_without_redis(task, req, args, kwargs, rt, exc)
    wait_us, now_us = max(int(reply[0]), 0), int(reply[1])
    held: dict[str, Any] | None = ask.state["held"]
    if held is not None:
        if len(reply) > 2 and int(reply[2]) == 1:
            req.rate_limit_slot = held
            return
        logger.info(
            "%s[%s]: back %d ms after its instant; booking again",
            task.name,
            req.id,
            (now_us - int(held.get("at_us") or 0)) // 1000,
        )
    key, limit = ask.state["key"], ask.state["limit"]
    interval_us, burst = intervals(limit)
    booking = {
        "id": req.id,
        "retries": int(req.retries or 0),
        "key": key,
        "at_us": now_us + wait_us,
        "late_us": burst * interval_us,
    }
    req.rate_limit_slot = booking
    if wait_us <= 0:
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
        headers={SLOT_HEADER: booking},
        key=key,
        limit=str(limit),
    )


def shape(task: Task, args: Any, kwargs: Any, task_id: str, options: dict[str, Any], rt: Runtime) -> int:
    """Book the instant of a call being published; returns milliseconds to park it for (0: send now).

    The booking goes into the message's headers, so the worker runs the task without
    asking again. When Redis cannot be reached nothing is booked (returns 0) and the
    worker decides instead.
    """
    spec: RateSpec | None = task._reliable_rate
    assert spec is not None
    retries = int(options.get("retries") or 0)
    headers = dict(options.get("headers") or {})
    held = headers.get(SLOT_HEADER)
    if isinstance(held, dict) and held.get("id") == task_id and held.get("retries") == retries:
        return 0  # booked already (a parked task coming back through the pump)
    meter, key, limit, cost = spec.call(task.name, tuple(args or ()), dict(kwargs or {}))
    try:
        wait_us, now_us = book(rt.redis, limiter_key(rt.config.key_prefix, meter, key), limit, cost)
    except RedisError as exc:
        logger.warning("%s: publish-time rate shaping skipped, Redis unreachable (%r)", task.name, exc)
        return 0
    interval_us, burst = intervals(limit)
    headers[SLOT_HEADER] = {
        "id": task_id,
        "retries": retries,
        "key": key,
        "at_us": now_us + wait_us,
        "late_us": burst * interval_us,
    }
    options["headers"] = headers
    return math.ceil(wait_us / 1000)


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
        message = f"cannot check the rate limit of {task.name} ({exc!r}) nor requeue it ({publish_error!r})"
        raise BackendUnavailable("redis", message) from exc
    emit(task, "task-rate-limited", rt.config.send_events, reason="redis-unavailable", delay_ms=round(delay * 1000))
    raise Ignore()
