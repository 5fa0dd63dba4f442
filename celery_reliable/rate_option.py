"""The ``global_rate_limit`` option of ReliableTask, checked when the task is declared.

A task's limit is shared by every worker through Redis (a GCRA meter per key, see
:mod:`celery_reliable.rate_guard`). Forms:

- ``global_rate_limit="20/s"``: a limit as written (:func:`~celery_reliable.parse_limit`).
  Written without a burst, a task's limit is smooth, as Celery's ``rate_limit`` is: tasks
  are spaced evenly and never more than the count run in any period. ``"20/s burst 5"``
  lets 5 start at once from idle (then at most 24 in any second).
- a :class:`~celery_reliable.ratelimit.Limit` or a
  :class:`~celery_reliable.ratelimit.Tiers` object, used as it is (their default burst
  is the count);
- a dict of tiers (``{"free": "10/m", "pro": "1000/m"}``), with ``rate_limit_tier``
  choosing each call's tier;
- :class:`RateLimit` (the full form, holding every option below).

``rate_limit_key`` (a template over the call's arguments such as ``"tenant:{tenant_id}"``,
or a callable) gives each key its own meter; unset, the task's name is the key, one limit
for all its calls. Keys are not scoped by task, so two tasks with the same key share a
meter (one limit for a dependency both call).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadLimit, ConfigurationError
from .idempotency.keys import KeyBuilder
from .ratelimit.base import check_text
from .ratelimit.limit import Limit, parse_limit
from .ratelimit.tiers import Tiers

#: The rate-limit options of ReliableTask.
RATE_OPTIONS = ("global_rate_limit", "rate_limit_key", "rate_limit_tier", "rate_limit_cost", "rate_limit_on_publish")


@dataclass(frozen=True)
class RateLimit:
    """Full form of the ``global_rate_limit`` option.

    Args:
        limit: ``"20/s"``, ``"100/m burst 10"``, a Limit, a Tiers, or a dict of tier names
            to limits.
        key: template over the call's arguments (``"tenant:{tenant_id}"``) or a callable
            returning a str; ``None``: the task's name (one meter for every call).
        tier: with tiers, a template or callable naming each call's tier (``"{plan}"``);
            ``None``: the default tier of a Tiers object.
        cost: how many requests one call counts for: an int, or a callable over the
            call's arguments returning one (at most the limit's burst).
        on_publish: shape at publish time: ``apply_async`` takes the call's slot and parks
            the task until it, so workers only receive tasks they may run.
    """

    limit: str | Limit | Tiers | Mapping[str, str | Limit]
    key: str | Callable[..., Any] | None = None
    tier: str | Callable[..., Any] | None = None
    cost: int | Callable[..., Any] = 1
    on_publish: bool = False


@dataclass(frozen=True)
class RateSpec:
    """A task's rate limit, checked against its signature."""

    limits: Mapping[str, Limit]  # tier name -> limit; "" for a single limit
    default_tier: str | None
    key: KeyBuilder | None
    tier: KeyBuilder | None
    cost: int | Callable[..., Any]
    on_publish: bool

    def call(self, task_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, str, Limit, int]:
        """The meter, key, limit and cost of one call (the meter is ``task`` or ``task:<tier>``).

        Raises:
            ConfigurationError: the call names an unknown tier, or its cost is wrong.
            IdempotencyKeyError: the call does not fit the key or tier template.
        """
        tier = ""
        if self.tier is not None:
            tier = self.tier.build(args, kwargs)
        elif self.default_tier is not None:
            tier = self.default_tier
        limit = self.limits.get(tier)
        if limit is None:
            raise ConfigurationError("rate_limit_tier", f"unknown tier {tier!r}; the tiers are {sorted(self.limits)}")
        key = task_name if self.key is None else self.key.build(args, kwargs)
        check_text("rate_limit_key", key)
        cost = self.cost(*args, **kwargs) if callable(self.cost) else self.cost
        _check_cost(cost, limit)
        return (f"task:{tier}" if tier else "task"), key, limit, cost


def _check_cost(cost: Any, limit: Limit) -> None:
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
        raise ConfigurationError("rate_limit_cost", f"expected an int of at least 1, got {cost!r}")
    assert limit.burst is not None
    if cost > limit.burst:
        raise ConfigurationError(
            "rate_limit_cost",
            f"{cost} exceeds the burst of {limit} ({limit.burst}); declare a burst at least that large, "
            f"for example {str(dataclasses.replace(limit, burst=cost))!r}",
        )


def _task_limit(value: Any, option: str) -> Limit:
    """A limit for a task: strings written without a burst are smooth (burst 1)."""
    try:
        limit = parse_limit(value)
    except BadLimit as exc:
        raise BadLimit(value, f"{exc.reason} (in {option})") from None
    if isinstance(value, str) and "burst" not in value.lower():
        limit = dataclasses.replace(limit, burst=1)
    return limit


def _builder(source: Any, sig: inspect.Signature | None, option: str) -> KeyBuilder | None:
    if source is None:
        return None
    if not (isinstance(source, str) and source) and not callable(source):
        raise ConfigurationError(
            option, f"expected a template string or a callable, got {type(source).__name__} {source!r}"
        )
    builder = KeyBuilder(source, sig, option=option)
    builder.validate()
    return builder


def compile_rate_limit(cls: type, own: Mapping[str, Any], sig: inspect.Signature | None) -> RateSpec | None:
    """Build the rate-limit spec of a task class from its options.

    Raises:
        BadLimit: for a limit that cannot be read (the message shows the accepted forms).
        ConfigurationError: for a wrong option value, or options that clash.
    """
    value = getattr(cls, "global_rate_limit", None)
    flat = {name: getattr(cls, name, None) for name in RATE_OPTIONS[1:]}
    if value is None:
        for name, given in flat.items():
            if given is not None and given is not False:
                raise ConfigurationError(name, "has no effect without global_rate_limit=...")
        return None
    if isinstance(value, RateLimit):
        for name in RATE_OPTIONS[1:]:
            if name in own:
                raise ConfigurationError(name, "clashes with global_rate_limit=RateLimit(...); set it inside RateLimit")
        option = value
    else:
        option = RateLimit(
            value,
            key=flat["rate_limit_key"],
            tier=flat["rate_limit_tier"],
            cost=1 if flat["rate_limit_cost"] is None else flat["rate_limit_cost"],
            on_publish=flat["rate_limit_on_publish"] or False,
        )
    default_tier: str | None = None
    if isinstance(option.limit, Tiers):
        limits = dict(option.limit.items())
        default_tier = option.limit.default
    elif isinstance(option.limit, Mapping):
        if not option.limit:
            raise ConfigurationError("global_rate_limit", "expected at least one tier, got an empty mapping")
        limits = {
            check_text("rate_limit_tier", tier): _task_limit(limit, f"tier {tier!r}")
            for tier, limit in option.limit.items()
        }
    else:
        limits = {"": _task_limit(option.limit, "global_rate_limit")}
    tiered = "" not in limits
    if not tiered and option.tier is not None:
        raise ConfigurationError("rate_limit_tier", "needs tiers: global_rate_limit={'free': '10/m', 'pro': '1000/m'}")
    if tiered and option.tier is None and default_tier is None:
        raise ConfigurationError(
            "rate_limit_tier", f'the limit has tiers {sorted(limits)} but nothing chooses one per call ("{{plan}}")'
        )
    cost = option.cost
    if not callable(cost):
        for limit in limits.values():
            _check_cost(cost, limit)
    if not isinstance(option.on_publish, bool):
        raise ConfigurationError("rate_limit_on_publish", f"expected True or False, got {option.on_publish!r}")
    return RateSpec(
        limits,
        default_tier,
        _builder(option.key, sig, "rate_limit_key"),
        _builder(option.tier, sig, "rate_limit_tier"),
        cost,
        option.on_publish,
    )
