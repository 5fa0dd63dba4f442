"""The ``circuit_breaker`` option of ReliableTask: checked at declaration, applied in the worker.

Each attempt asks the breaker first (one script). While it is OPEN the task is parked in
the deferred set until the breaker lets probes through (no worker slot held, no retry
spent, event ``task-circuit-open``), or, with ``circuit_breaker_fallback``, it returns
the fallback's answer instead. An admitted attempt's outcome is recorded when the body
ends: failures are classified by the breaker's rules (by default every error except the
caller's own, such as ``TypeError`` or HTTP 401). Retries happen inside the breaker:
each retry is a new attempt that asks again, so nothing is attempted while it is open.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore, Reject, Retry

from .admission import Ask, Release
from .breaker.breaker import CircuitBreaker
from .errors import CircuitOpen, ConfigurationError
from .events import emit
from .jsoncodec import dumps, fingerprint, loads

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

    from .breaker.options import Outcome
    from .breaker.state import Permit, StateChange
    from .config import ReliableConfig
    from .runtime import Runtime

logger = logging.getLogger("celery_reliable")

#: The circuit-breaker options of ReliableTask.
BREAKER_OPTIONS = ("circuit_breaker", "circuit_breaker_fallback")
#: The fallback that answers with the last good result of the same call.
LAST_RESULT = "last_result"


@dataclass(frozen=True)
class BreakerSpec:
    """A task's breaker option, checked: a breaker name (from settings) or an object."""

    name: str
    breaker: CircuitBreaker | None  # None: built from reliable_circuit_breakers per app
    fallback: str | Callable[..., Any] | None


@dataclass(frozen=True)
class Answer:
    """What a fallback answered instead of running the body."""

    value: Any


def compile_breaker(cls: type) -> BreakerSpec | None:
    """Build the breaker spec of a task class from its options.

    Raises:
        ConfigurationError: for a wrong value, or a fallback without a breaker.
    """
    value = getattr(cls, "circuit_breaker", None)
    fallback = getattr(cls, "circuit_breaker_fallback", None)
    if value is None:
        if fallback is not None:
            raise ConfigurationError("circuit_breaker_fallback", "has no effect without circuit_breaker=...")
        return None
    if fallback is not None and fallback != LAST_RESULT and not callable(fallback):
        raise ConfigurationError(
            "circuit_breaker_fallback",
            f"expected {LAST_RESULT!r} or a callable taking the task's arguments, got {fallback!r}",
        )
    if isinstance(value, CircuitBreaker):
        return BreakerSpec(value.name, value, fallback)
    if isinstance(value, str) and value:
        from .ratelimit.base import check_text

        return BreakerSpec(check_text("circuit_breaker", value), None, fallback)
    got = f"{type(value).__name__} {value!r}"
    raise ConfigurationError("circuit_breaker", f"expected a breaker name (str) or a CircuitBreaker(...), got {got}")


def check_breakers_known(tasks: Mapping[str, Any], cfg: ReliableConfig) -> None:
    """Check, at worker start, for breaker names that look like a misspelt configured one.

    A name ``reliable_circuit_breakers`` does not list is a breaker with the default
    rules; one that is a near miss of a listed name is almost surely a typo.

    Raises:
        ConfigurationError: naming the task, its breaker and the listed name it resembles.
    """
    for name, task in sorted(tasks.items()):
        spec: BreakerSpec | None = getattr(task, "_reliable_breaker", None)
        if spec is None or spec.breaker is not None or spec.name in cfg.circuit_breakers:
            continue
        close = difflib.get_close_matches(spec.name, list(cfg.circuit_breakers), n=1)
        if close:
            raise ConfigurationError(
                "circuit_breaker",
                f"task {name} uses breaker {spec.name!r}, which reliable_circuit_breakers does not list; "
                f"did you mean {close[0]!r}?",
            )


def breaker_for(spec: BreakerSpec, rt: Runtime) -> CircuitBreaker:
    """The breaker of a spec: the object given, or the app's breaker of that name."""
    if spec.breaker is not None:
        return spec.breaker
    cache: dict[str, CircuitBreaker] = rt.__dict__.setdefault("_breakers", {})
    found = cache.get(spec.name)
    if found is None:
        cfg = rt.config
        options = cfg.circuit_breakers.get(spec.name, {})
        found = cache[spec.name] = CircuitBreaker(spec.name, url=cfg.redis_url, prefix=cfg.key_prefix, **options)
    return found


def prepare(task: Task, rt: Runtime) -> Ask | None:
    """The breaker's question for the admission round trip, or None.

    Only a breaker on the app's Redis joins it: one named in settings, or an object built
    with ``url=`` the app's Redis URL and no test clock. Others ask on their own.
    """
    spec: BreakerSpec | None = task._reliable_breaker
    if spec is None:
        return None
    breaker = breaker_for(spec, rt)
    if breaker.client is not None or breaker.clock is not None or breaker.url != rt.config.redis_url:
        return None
    token = uuid.uuid4().hex
    keys, args = breaker.admit_request(token)
    return Ask("breaker", "breaker_admit", keys, args, {"token": token})


def admit(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, ask: Ask | None = None
) -> Permit | Answer:
    """Ask the task's breaker; returns the permit, or the fallback's answer; parks the task while open.

    ``ask``: the breaker's question, answered in the admission round trip; without an
    answer the breaker is asked here.

    Raises:
        Ignore: the task was parked until the breaker lets probes through.
    """
    spec: BreakerSpec = task._reliable_breaker
    breaker = breaker_for(spec, rt)
    if ask is not None and ask.answered:
        permit = breaker.permit_of(ask.take(), ask.state["token"])
    else:  # the admission's token, if any: a lost reply's probe is not taken twice
        permit = breaker.allow(None if ask is None else ask.state["token"])
    _announce(task, rt, permit.change)
    if permit:
        return permit
    fields: dict[str, Any] = {
        "breaker": spec.name,
        "state": permit.state.value,
        "retry_after": round(permit.retry_after, 3),
    }
    if spec.fallback is not None:
        value = _fallback(task, spec, args, kwargs, rt, permit.retry_after)
        emit(task, "task-circuit-open", rt.config.send_events, reason="fallback", **fields)
        return Answer(value)
    if req.is_eager:
        raise CircuitOpen(spec.name, permit.retry_after)
    from .execution import defer

    # Spread the parked attempts over part of the next open period: they come back as the
    # breaker lets probes through, not as one herd refused again each time.
    spread_ms = random.randint(0, breaker.options.recovery_timeout_ms // 2)
    delay_ms = max(round(permit.retry_after * 1000), 50) + spread_ms
    defer(task, req, args, kwargs, rt, delay_ms, reason="circuit-open", event="task-circuit-open", **fields)


def success_of(task: Task, rt: Runtime, permit: Permit, ask: Ask | None, started: float) -> Release | None:
    """The record of a successful attempt, for the completion round trip; or None.

    Only for a breaker that joined the admission (it is on the app's Redis) and keeps no
    last good result (that fallback writes the result too: :func:`done` does both).
    """
    spec: BreakerSpec = task._reliable_breaker
    if ask is None or not ask.answered or spec.fallback == LAST_RESULT:
        return None
    breaker = breaker_for(spec, rt)

    def request() -> tuple[list[str], list[str]] | None:
        return breaker.record_request(permit, "success", time.monotonic() - started)

    def then(reply: Any) -> None:
        if isinstance(reply, Exception):
            logger.warning("%s: could not record the outcome with breaker %s: %r", task.name, spec.name, reply)
        else:
            _announce(task, rt, breaker.recorded(reply))

    return Release("breaker", "breaker_record", request, then)


def done(
    task: Task,
    rt: Runtime,
    permit: Permit,
    started: float,
    exc: BaseException | None,
    result: Any,
    *,
    entered: bool,
) -> None:
    """Record how an admitted attempt ended; keep a good result for the ``last_result`` fallback.

    Only an attempt whose body ran counts (``entered``): a replayed duplicate, a skipped or
    busy lock, a full bulkhead and the guards' own errors did not call the dependency, and
    are recorded as ignored (a half-open probe permit is given back). A ``Retry`` raised by
    the body (``self.retry(exc=...)``, ``autoretry_for``) counts as the error it carries.
    Never raises: the attempt's own outcome must not change because the breaker could not
    record it.
    """
    spec: BreakerSpec = task._reliable_breaker
    try:
        breaker = breaker_for(spec, rt)
        if isinstance(exc, Retry):
            exc = exc.exc if isinstance(exc.exc, BaseException) else None
            outcome: Outcome = breaker.options.outcome_of(exc) if exc is not None and entered else "ignored"
        elif not entered or isinstance(exc, (Ignore, Reject)):
            outcome = "ignored"
        else:
            outcome = breaker.options.outcome_of(exc)
        _announce(task, rt, breaker.record(permit, outcome, time.monotonic() - started))
    except Exception as error:
        logger.warning("%s: could not record the outcome with breaker %s: %r", task.name, spec.name, error)
        return
    if exc is None and entered and spec.fallback == LAST_RESULT:
        _keep(task, rt, result)


def _last_key(task: Task, rt: Runtime, args: Any, kwargs: Any) -> str:
    """The key of the last good result of a call, the same however its arguments were passed."""
    try:
        sig: inspect.Signature | None = inspect.signature(task.run)  # as callers see it (no self)
    except (TypeError, ValueError):
        sig = None
    try:
        bound = sig.bind(*args, **kwargs) if sig is not None else None
    except TypeError:
        bound = None
    if bound is not None:
        bound.apply_defaults()
        args, kwargs = (), dict(bound.arguments)
    return f"{rt.config.key_prefix}:cb-last:{{{task.name}}}:{fingerprint(tuple(args), dict(kwargs))}"


def _keep(task: Task, rt: Runtime, result: Any) -> None:
    req = task.request
    try:
        rt.redis.set(
            _last_key(task, rt, req.args or (), req.kwargs or {}),
            dumps(result, where=f"result of {task.name}"),
            px=rt.config.breaker_fallback_ttl_ms,
        )
    except Exception as exc:  # the fallback is a convenience; the task succeeded
        logger.warning("%s: could not keep the last good result for the breaker fallback: %r", task.name, exc)


def _fallback(
    task: Task, spec: BreakerSpec, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, retry_after: float
) -> Any:
    if callable(spec.fallback):
        return spec.fallback(*args, **kwargs)
    raw = rt.redis.get(_last_key(task, rt, args, kwargs))
    if raw is None:  # nothing good to answer with: fail as the breaker says
        raise CircuitOpen(spec.name, retry_after)
    return loads(raw)


def _announce(task: Task, rt: Runtime, change: StateChange | None) -> None:
    """Send a ``reliable-circuit-changed`` event for a transition this task's call made.

    The breaker itself logs the transition and sends ``breaker_state_changed``; only the
    process whose script made the transition announces it, so each is announced once.
    """
    if change is not None:
        emit(task, "reliable-circuit-changed", rt.config.send_events, **change.as_fields())
