"""Task options: the full-form option objects and their checking at declaration."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .config import duration_ms
from .errors import ConfigurationError, UnknownOptionError
from .idempotency.keys import KeyBuilder, KeySource

#: The options ReliableTask adds to Celery's (each documented on ReliableTask).
RELIABLE_OPTIONS = (
    "idempotency_key",
    "idempotency_namespace",
    "idempotency_ttl",
    "idempotency_on_publish",
    "singleton",
    "lock_key",
    "lock_ttl",
    "lock_backend",
    "on_locked",
    "retry_policy",
    "retry_budget",
    "global_rate_limit",
    "rate_limit_key",
    "rate_limit_tier",
    "rate_limit_cost",
    "rate_limit_on_publish",
    "circuit_breaker",
    "circuit_breaker_fallback",
    "bulkhead",
    "bulkhead_on_full",
    "max_queue_depth",
    "inbox",
    "inbox_ttl",
)

#: Options Celery's task decorator reads that are not Task attributes.
CELERY_DECORATOR_OPTIONS = frozenset(
    {
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "pydantic",
        "pydantic_strict",
        "pydantic_context",
        "pydantic_dump_kwargs",
        # publishing attributes Celery reads from the task class (extract_exec_options)
        "queue",
        "exchange",
        "exchange_type",
        "routing_key",
        "delivery_mode",
        "compression",
        "immediate",
        "mandatory",
    }
)

#: Keys Celery itself puts in the class it builds from a decorated function.
_CELERY_GENERATED = frozenset(
    {
        "app",
        "name",
        "run",
        "_decorated",
        "_dump_pydantic_arguments",
        "__header__",
        "__wrapped__",
        "_decorated_fun",
        "__doc__",
        "__module__",
        "__annotations__",
        "__qualname__",
    }
)


@dataclass(frozen=True)
class Idempotency:
    """Full form of the ``idempotency_key`` option.

    Args:
        key: template over the call's arguments (``"charge:{order_id}"``), a callable
            taking the task's arguments and returning a str, or ``True`` for a hash of
            all arguments.
        namespace: optional extra scope (a tenant), as a template or callable.
        ttl: how long a completed key replays its result (seconds or timedelta);
            default ``reliable_idempotency_ttl``.
        on_publish: also deduplicate at ``apply_async``: a key already queued, running
            or done returns the original task's ``AsyncResult`` instead of publishing.
    """

    key: KeySource
    namespace: str | Callable[..., Any] | None = None
    ttl: float | timedelta | None = None
    on_publish: bool = False


@dataclass(frozen=True)
class IdempotencySpec:
    """An Idempotency option checked against one task's signature."""

    key: KeyBuilder
    namespace: KeyBuilder | None
    ttl_ms: int | None
    on_publish: bool

    def scoped(self, task_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """Build the scoped storage key of one call."""
        from .idempotency.keys import scoped_key

        ns = self.namespace.build(args, kwargs) if self.namespace is not None else None
        return scoped_key(task_name, self.key.build(args, kwargs), ns)


def task_signature(run: Any) -> inspect.Signature | None:
    """Signature of a task's body as callers see it (``self`` dropped for bound tasks)."""
    if run is None:
        return None
    bound = not isinstance(run, staticmethod)
    fun = run.__func__ if isinstance(run, staticmethod) else run
    try:
        sig = inspect.signature(fun)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if bound and params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    return sig.replace(parameters=params)


def check_unknown(cls: type, names: Any) -> None:
    """Fail for decorator options that neither Celery nor celery-reliable knows."""
    for name in names:
        if name in _CELERY_GENERATED or name in CELERY_DECORATOR_OPTIONS or name.startswith("__"):
            continue
        if any(name in vars(base) for base in cls.__mro__[1:]):
            continue
        known = set(RELIABLE_OPTIONS) | {n for n in dir(cls.__mro__[1]) if not n.startswith("_")}
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownOptionError(name, f"unknown task option for {cls.__name__}{hint}")


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(name, f"expected True or False, got {type(value).__name__} {value!r}")
    return value


def compile_idempotency(cls: type, own: Mapping[str, Any]) -> IdempotencySpec | None:
    """Build the idempotency spec of a task class from its options.

    Raises:
        ConfigurationError: for a wrong value, or options that clash.
    """
    source = getattr(cls, "idempotency_key", None)
    if source is None or source is False:
        return None
    if isinstance(source, Idempotency):
        for flat in ("idempotency_namespace", "idempotency_ttl", "idempotency_on_publish"):
            if flat in own:
                raise ConfigurationError(
                    flat, "clashes with idempotency_key=Idempotency(...); set it inside the Idempotency object"
                )
        option = source
    else:
        option = Idempotency(
            key=source,
            namespace=getattr(cls, "idempotency_namespace", None),
            ttl=getattr(cls, "idempotency_ttl", None),
            on_publish=getattr(cls, "idempotency_on_publish", False),
        )
    sig = task_signature(vars(cls).get("run") or getattr(cls, "run", None))
    if option.key is True:
        key = KeyBuilder(True, sig)
    elif isinstance(option.key, (str,)) or callable(option.key):
        key = KeyBuilder(option.key, sig)
    else:
        raise ConfigurationError(
            "idempotency_key",
            "expected a template string, a callable, True or Idempotency(...), "
            f"got {type(option.key).__name__} {option.key!r}",
        )
    key.validate()
    namespace = None
    if option.namespace is not None:
        namespace = KeyBuilder(option.namespace, sig, option="idempotency_namespace")
        namespace.validate()
    ttl_ms = None if option.ttl is None else duration_ms("idempotency_ttl", option.ttl)
    if ttl_ms is not None and ttl_ms < 1000:
        raise ConfigurationError("idempotency_ttl", f"must be at least one second, got {option.ttl!r}")
    return IdempotencySpec(key, namespace, ttl_ms, _bool("idempotency_on_publish", option.on_publish))


def compile_retry(cls: type) -> None:
    """Check the retry options of a task class (``retry_policy``, ``retry_budget``).

    Raises:
        ConfigurationError: for a wrong value, or options that clash.
    """
    from .retries import RetryPolicy

    policy = getattr(cls, "retry_policy", None)
    if policy is True:
        cls.retry_policy = policy = RetryPolicy()  # type: ignore[attr-defined]
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise ConfigurationError(
            "retry_policy", f"expected a RetryPolicy(...) or True, got {type(policy).__name__} {policy!r}"
        )
    budget = getattr(cls, "retry_budget", None)
    if budget not in (None, False, True) and not (isinstance(budget, str) and budget):
        raise ConfigurationError("retry_budget", f"expected True or a budget name (str), got {budget!r}")
    if budget and policy is None:
        raise ConfigurationError("retry_budget", "has no effect without retry_policy=RetryPolicy(...)")
    if policy is not None and getattr(cls, "autoretry_for", None):
        raise ConfigurationError("retry_policy", "clashes with autoretry_for; the policy decides what is retried")
