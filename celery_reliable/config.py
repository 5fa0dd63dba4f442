"""Parse the ``reliable_*`` settings once into a typed :class:`ReliableConfig`."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .defaults import SETTINGS, SETTINGS_BY_NAME, Setting
from .errors import ConfigurationError, UnknownOptionError

if TYPE_CHECKING:
    from celery import Celery

_CACHE_ATTR = "_celery_reliable_config"

#: The lock backends a singleton task can use.
LOCK_BACKENDS = ("redis", "redlock", "postgres")
#: What a rate-limited task does when Redis cannot be reached.
ON_REDIS_ERROR = ("defer", "allow")
#: Setting kinds that take one of a few strings.
CHOICES = {"lock_backend": LOCK_BACKENDS, "rate_limit_on_redis_error": ON_REDIS_ERROR}


@dataclass(frozen=True)
class ReliableConfig:
    """The settings of one app, checked and normalised (durations in milliseconds)."""

    redis_url: str
    database_url: str | None
    key_prefix: str
    idempotency_ttl_ms: int
    claim_lease_ms: int
    busy_delay_ms: int
    defer_jitter_ms: int
    defer_threshold_ms: int
    lock_ttl_ms: int
    lock_backend: str
    rate_limit_on_redis_error: str
    bulkheads: dict[str, int]
    bulkhead_lease_ms: int
    queue_depth_cache_ms: int
    circuit_breakers: dict[str, dict[str, Any]]
    breaker_fallback_ttl_ms: int
    beat_lease_ms: int
    redlock_urls: tuple[str, ...]
    max_message_bytes: int | None
    max_deliveries: int
    pump_enabled: bool
    pump_interval_ms: int
    pump_batch: int
    pump_lease_ms: int
    cleanup_batch: int
    cleanup_interval_ms: int
    dead_letter_retention_ms: int
    dead_letter_batch: int
    send_events: bool
    check_redis: bool
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    log_json: bool = False


def as_seconds(name: str, value: Any) -> float:
    """Seconds from an int, a float or a timedelta (the one form every duration takes at the edge).

    Raises:
        ConfigurationError: for a value of another type (bool included), naming ``name``.
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(name, f"expected seconds (int or float) or a timedelta, got {value!r}")


def duration_ms(name: str, value: Any) -> int:
    """Normalise a duration (seconds or timedelta) to whole milliseconds.

    Raises:
        ConfigurationError: for a negative value or a value of another type.
    """
    seconds = as_seconds(name, value)
    if seconds < 0 or seconds != seconds:
        raise ConfigurationError(name, f"must be a non-negative duration, got {value!r}")
    return round(seconds * 1000)


def _check(setting: Setting, value: Any) -> Any:
    name, kind = setting.name, setting.kind
    if kind == "duration":
        return duration_ms(name, value)
    if kind in ("str", "optional_str"):
        if value is None and kind == "optional_str":
            return None
        if not isinstance(value, str) or not value:
            raise ConfigurationError(name, f"expected a non-empty string, got {type(value).__name__} {value!r}")
        return value
    if kind == "optional_int" and value is None:
        return None
    if kind in ("int", "optional_int"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(name, f"expected a positive int, got {type(value).__name__} {value!r}")
        return value
    if kind in ("bool", "optional_bool"):
        if value is None and kind == "optional_bool":
            return None
        if not isinstance(value, bool):
            raise ConfigurationError(name, f"expected True or False, got {type(value).__name__} {value!r}")
        return value
    if kind == "str_list":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigurationError(name, f"expected a list of strings, got {type(value).__name__} {value!r}")
        for item in value:
            if not isinstance(item, str) or not item:
                raise ConfigurationError(name, f"expected non-empty strings, got {item!r}")
        return tuple(value)
    if kind == "bulkhead_tiers":
        from .bulkhead.tiers import check_tiers

        return check_tiers(value, name)
    if kind == "breaker_options":
        return _breaker_options(name, value)
    if kind in CHOICES:
        if value not in CHOICES[kind]:
            raise ConfigurationError(name, f"expected one of {', '.join(map(repr, CHOICES[kind]))}, got {value!r}")
        return value
    raise AssertionError(kind)  # pragma: no cover


def _breaker_options(name: str, value: Any) -> dict[str, dict[str, Any]]:
    """Check a mapping of breaker names to CircuitBreaker keyword arguments."""
    if not isinstance(value, dict):
        raise ConfigurationError(name, f"expected a dict of breaker names to option dicts, got {value!r}")
    from .breaker.breaker import CircuitBreaker

    checked: dict[str, dict[str, Any]] = {}
    for breaker, options in value.items():
        if not isinstance(options, dict):
            raise ConfigurationError(name, f"options of breaker {breaker!r} must be a dict, got {options!r}")
        for option in ("client", "url", "prefix", "clock"):
            if option in options:
                raise ConfigurationError(name, f"breaker {breaker!r}: {option} comes from the app's settings")
        try:
            CircuitBreaker(breaker, url="redis://checked-only", **options)
        except ConfigurationError as exc:
            raise ConfigurationError(name, f"breaker {breaker!r}: {exc}") from None
        except TypeError as exc:
            raise ConfigurationError(name, f"breaker {breaker!r}: {exc}") from None
        checked[breaker] = dict(options)
    return checked


def check_unknown(names: Any) -> None:
    """Raise :class:`UnknownOptionError` for a ``reliable_*`` name we do not define."""
    for name in names:
        if isinstance(name, str) and name.lower().startswith("reliable_") and name not in SETTINGS_BY_NAME:
            close = difflib.get_close_matches(name, SETTINGS_BY_NAME, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownOptionError(name, f"unknown celery-reliable setting{hint}")


def _default_redis_url(app: Celery) -> str:
    broker = app.conf.broker_url or ""
    if isinstance(broker, str) and broker.startswith(("redis://", "rediss://", "unix://")):
        return broker
    raise ConfigurationError(
        "reliable_redis_url",
        "not set, and the broker is not Redis; set app.conf.reliable_redis_url = 'redis://host:6379/1'",
    )


def parse(app: Celery) -> ReliableConfig:
    """Check every ``reliable_*`` setting of ``app`` and build its config.

    Raises:
        ConfigurationError: naming the first wrong setting.
        UnknownOptionError: naming a ``reliable_*`` setting that does not exist.
    """
    conf = app.conf
    check_unknown(list(conf.keys()))
    values = {s.name: _check(s, conf.get(s.name, s.default)) for s in SETTINGS}
    redis_url = values["reliable_redis_url"] or _default_redis_url(app)
    send_events = values["reliable_send_events"]
    if send_events is None:
        send_events = bool(conf.get("worker_send_task_events"))
    return ReliableConfig(
        redis_url=redis_url,
        database_url=values["reliable_database_url"],
        key_prefix=values["reliable_key_prefix"],
        idempotency_ttl_ms=max(values["reliable_idempotency_ttl"], 1000),
        claim_lease_ms=max(values["reliable_claim_lease"], 300),
        busy_delay_ms=values["reliable_busy_delay"],
        defer_jitter_ms=values["reliable_defer_jitter"],
        defer_threshold_ms=values["reliable_defer_threshold"],
        lock_ttl_ms=max(values["reliable_lock_ttl"], 100),
        lock_backend=values["reliable_lock_backend"],
        rate_limit_on_redis_error=values["reliable_rate_limit_on_redis_error"],
        bulkheads=values["reliable_bulkheads"],
        bulkhead_lease_ms=max(values["reliable_bulkhead_lease"], 100),
        queue_depth_cache_ms=values["reliable_queue_depth_cache"],
        circuit_breakers=values["reliable_circuit_breakers"],
        breaker_fallback_ttl_ms=max(values["reliable_breaker_fallback_ttl"], 300_000),
        beat_lease_ms=max(values["reliable_beat_lease"], 1000),
        redlock_urls=values["reliable_redlock_urls"],
        max_message_bytes=values["reliable_max_message_bytes"],
        max_deliveries=values["reliable_max_deliveries"],
        pump_enabled=values["reliable_pump_enabled"],
        pump_interval_ms=max(values["reliable_pump_interval"], 10),
        pump_batch=values["reliable_pump_batch"],
        pump_lease_ms=max(values["reliable_pump_lease"], 1000),
        cleanup_batch=values["reliable_cleanup_batch"],
        cleanup_interval_ms=max(values["reliable_cleanup_interval"], 1000),
        dead_letter_retention_ms=values["reliable_dead_letter_retention"],
        dead_letter_batch=values["reliable_dead_letter_batch"],
        send_events=send_events,
        check_redis=values["reliable_check_redis"],
        metrics_port=values["reliable_metrics_port"],
        metrics_addr=values["reliable_metrics_addr"],
        log_json=values["reliable_log_json"],
    )


def get_config(app: Celery) -> ReliableConfig:
    """Return the app's config, parsing the settings on first use."""
    cached: ReliableConfig | None = app.__dict__.get(_CACHE_ATTR)
    if cached is None:
        cached = parse(app)
        app.__dict__[_CACHE_ATTR] = cached
    return cached


def override_config(app: Celery, **changes: Any) -> ReliableConfig:
    """Replace fields of the app's parsed config (for values the worker learns at start)."""
    updated = dataclasses.replace(get_config(app), **changes)
    app.__dict__[_CACHE_ATTR] = updated
    app.__dict__.pop("_celery_reliable_runtime", None)
    return updated


def reset_config(app: Celery) -> None:
    """Forget the parsed config (and what was built from it) so settings are read again."""
    app.__dict__.pop(_CACHE_ATTR, None)
    app.__dict__.pop("_celery_reliable_runtime", None)
