"""Every ``reliable_*`` setting, its type and its default.

Set them on the Celery app (``app.conf.reliable_redis_url = ...``) or in a config
module. Durations accept seconds (int or float) or a :class:`datetime.timedelta`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One setting: the kind of value it takes, its default and what it means."""

    name: str
    kind: str  # str, optional_str, duration, int, optional_int, bool, optional_bool, str_list, or a CHOICES name
    default: Any
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "reliable_redis_url",
        "optional_str",
        None,
        "Redis for claims, results cache and the deferred set. Unset: the broker URL when the broker is Redis.",
    ),
    Setting(
        "reliable_database_url",
        "optional_str",
        None,
        "SQLAlchemy URL of the database that holds idempotency records "
        "(postgresql+psycopg://... or sqlite:///...). Unset: Redis only, which does "
        "not survive Redis losing its data.",
    ),
    Setting("reliable_key_prefix", "str", "reliable", "Prefix of every Redis key we write."),
    Setting(
        "reliable_idempotency_ttl",
        "duration",
        86400.0,
        "How long a completed idempotency key replays its result (default 24 h).",
    ),
    Setting(
        "reliable_claim_lease",
        "duration",
        30.0,
        "Lease of an in-progress claim. The running worker renews it every third of the "
        "lease; a dead worker's claim frees itself after at most this long.",
    ),
    Setting(
        "reliable_busy_delay",
        "duration",
        1.0,
        "Shortest wait before a task whose key is in progress elsewhere is tried again.",
    ),
    Setting(
        "reliable_defer_jitter",
        "duration",
        0.5,
        "Random extra wait added to every deferral so parked tasks do not return together.",
    ),
    Setting(
        "reliable_defer_threshold",
        "duration",
        1.0,
        "A ReliableTask countdown/eta longer than this is parked in the deferred set "
        "instead of being sent as an ETA message.",
    ),
    Setting(
        "reliable_lock_ttl",
        "duration",
        30.0,
        "Lease of a task's singleton lock when the task sets no lock_ttl; renewed while the body runs.",
    ),
    Setting(
        "reliable_lock_backend",
        "lock_backend",
        "redis",
        "Default lock_backend of singleton tasks: 'redis', 'redlock' or 'postgres'.",
    ),
    Setting(
        "reliable_redlock_urls",
        "str_list",
        (),
        "Redis URLs of the independent nodes the 'redlock' lock backend uses (3 or 5).",
    ),
    Setting(
        "reliable_max_message_bytes",
        "optional_int",
        1_048_576,
        "Largest serialized arguments apply_async publishes (bytes); larger calls raise MessageTooLarge. "
        "None: no limit.",
    ),
    Setting(
        "reliable_max_deliveries",
        "int",
        5,
        "Deliveries after which a task whose worker died each time is dead-lettered as poison.",
    ),
    Setting(
        "reliable_rate_limit_on_redis_error",
        "rate_limit_on_redis_error",
        "defer",
        "What a rate-limited task does when Redis cannot be reached: 'defer' (fail closed: sent back "
        "through the broker with a countdown of 2-4 s, or left unacknowledged) or 'allow' (fail open: runs).",
    ),
    Setting(
        "reliable_bulkheads",
        "bulkhead_tiers",
        {"critical": 50, "standard": 20, "optional": 10},
        "Bulkhead tiers: name to the most tasks of the tier running at once, cluster-wide "
        "(a task opts in with bulkhead='critical'). Also the worker pools of workers/.",
    ),
    Setting(
        "reliable_bulkhead_lease",
        "duration",
        30.0,
        "Lease of a bulkhead slot, renewed while the body runs; a dead worker's slot comes back after it.",
    ),
    Setting(
        "reliable_queue_depth_cache",
        "duration",
        1.0,
        "How long apply_async reuses a queue-depth reading for max_queue_depth (per process and queue).",
    ),
    Setting(
        "reliable_circuit_breakers",
        "breaker_options",
        {},
        "Options of named circuit breakers (circuit_breaker='stripe'): name to CircuitBreaker keyword "
        "arguments, such as {'stripe': {'failure_threshold': 5, 'recovery_timeout': 30}}. A name not "
        "listed gets the defaults (50% failures over 10 calls, 30 s open, one probe).",
    ),
    Setting(
        "reliable_breaker_fallback_ttl",
        "duration",
        300.0,
        "How long a task's last good result is kept for circuit_breaker_fallback='last_result'.",
    ),
    Setting(
        "reliable_beat_lease",
        "duration",
        30.0,
        "Lease of the beat leader (LeaderScheduler): renewed every third; a standby beat takes over "
        "at most this long (plus about a second) after the leader dies.",
    ),
    Setting("reliable_pump_enabled", "bool", True, "Run the deferred-set pump in every worker."),
    Setting("reliable_pump_interval", "duration", 0.5, "Longest the pump sleeps when nothing is due sooner."),
    Setting("reliable_pump_batch", "int", 200, "Most tasks the pump moves in one step."),
    Setting(
        "reliable_pump_lease",
        "duration",
        15.0,
        "How long a pumped entry may stay in flight before a sweep puts it back (a worker "
        "killed mid-publish delays its entries by at most this long).",
    ),
    Setting(
        "reliable_cleanup_batch",
        "int",
        1000,
        "Rows the cleanup job deletes per statement (bounded batches).",
    ),
    Setting(
        "reliable_cleanup_interval",
        "duration",
        300.0,
        "How often beat runs the idempotency cleanup job.",
    ),
    Setting(
        "reliable_dead_letter_retention",
        "duration",
        30 * 86400.0,
        "How long dead letters are kept: the purge job run by beat deletes older ones (default 30 days).",
    ),
    Setting(
        "reliable_dead_letter_batch",
        "int",
        1000,
        "Dead letters the purge job deletes per transaction (bounded batches).",
    ),
    Setting("reliable_outbox_batch", "int", 500, "Outbox rows a relay claims, publishes and marks in one transaction."),
    Setting(
        "reliable_outbox_interval",
        "duration",
        1.0,
        "How often beat runs the outbox relay (also how long a relay run's messages may wait without listen mode).",
    ),
    Setting(
        "reliable_outbox_run_limit",
        "duration",
        5.0,
        "Longest one relay run keeps claiming batches before it returns (other relays may run meanwhile).",
    ),
    Setting(
        "reliable_outbox_max_attempts",
        "int",
        12,
        "Failed publishes of one outbox row (unknown task, broker refusing it) before the row is parked as dead.",
    ),
    Setting(
        "reliable_outbox_retry_base",
        "duration",
        1.0,
        "Backoff after an outbox row's first failed publish; doubles per attempt (equal jitter) up to the cap.",
    ),
    Setting("reliable_outbox_retry_cap", "duration", 300.0, "Longest backoff between publishes of one outbox row."),
    Setting(
        "reliable_outbox_retention",
        "duration",
        7 * 86400.0,
        "How long published outbox rows are kept before the outbox cleanup job deletes them (default 7 days).",
    ),
    Setting(
        "reliable_outbox_listen",
        "bool",
        False,
        "Low-latency outbox: enqueue() sends NOTIFY at commit and every worker LISTENs and relays at once "
        "(PostgreSQL only).",
    ),
    Setting(
        "reliable_outbox_poll_interval",
        "duration",
        1.0,
        "In listen mode, how often a worker's listener also relays without a notification (retries due, "
        "missed notifications).",
    ),
    Setting(
        "reliable_outbox_require_registered",
        "bool",
        True,
        "The relay publishes only task names its app has registered; other rows are retried, then parked as dead "
        "(a worker would drop a message for a task it does not know).",
    ),
    Setting(
        "reliable_send_events",
        "optional_bool",
        None,
        "Send task-deduplicated, task-deferred, task-rate-limited, task-lock-skipped, task-lock-lost "
        "and task-dead-lettered events. "
        "Unset: follow worker_send_task_events (celery worker -E).",
    ),
    Setting(
        "reliable_saga_sweep_interval",
        "duration",
        5.0,
        "How often sagas are swept (by a worker thread where sagas are defined, and by beat): a saga past its "
        "timeout starts compensating, a step whose lease ran out (its worker died) is sent again.",
    ),
    Setting(
        "reliable_log_json",
        "bool",
        False,
        "Render the logs of workers and beat as one JSON object per line (celery_reliable.logs.JsonFormatter), "
        "with each decision's task id, idempotency key and fields. Set on the handlers Celery creates at start; "
        "with your own logging configuration, use the formatter there instead.",
    ),
    Setting(
        "reliable_check_redis",
        "bool",
        True,
        "At worker start, warn when Redis' eviction policy could drop our keys.",
    ),
    Setting(
        "reliable_metrics_port",
        "optional_int",
        None,
        "Serve Prometheus metrics from every worker (its parent process) on this port. None: no endpoint. "
        "Needs prometheus_client (pip install 'celery-reliable[metrics]').",
    ),
    Setting(
        "reliable_metrics_addr",
        "str",
        "127.0.0.1",
        "Address the metrics endpoint listens on; '0.0.0.0' lets Prometheus on other hosts scrape it.",
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
