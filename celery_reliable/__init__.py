"""celery-reliable: exactly-once effects and reliability guards for Celery tasks."""

from __future__ import annotations

from .beat_leader import LeaderScheduler
from .breaker import CircuitBreaker, circuit_breaker
from .bulkhead import Bulkhead
from .config import ReliableConfig, get_config
from .deadletter import DeadLetter, DeadLetterStore
from .errors import (
    BackendUnavailable,
    BadLimit,
    BulkheadFull,
    CircuitOpen,
    ConfigurationError,
    DuplicateExecution,
    DuplicateMessage,
    IdempotencyError,
    IdempotencyInProgress,
    IdempotencyKeyError,
    IdempotencyKeyMismatch,
    IdempotencyKeyReused,
    KeyInProgress,
    LockError,
    LockLost,
    LockNotAcquired,
    MessageTooLarge,
    PoisonMessage,
    QueueFull,
    QuorumUnavailable,
    ReliableError,
    ResultNotSerializable,
    SerializationError,
    StaleFencingToken,
    TransactionError,
    UnknownOptionError,
)
from .http import IdempotencyMiddleware, idempotent_execute
from .install import install
from .locks import PostgresAdvisoryLock, RedisLock, Redlock, fenced_set, fenced_update, fenced_upsert
from .maintenance import beat_schedule
from .options import Idempotency
from .rate_option import RateLimit
from .ratelimit import GCRALimiter, Limit, SlidingWindowLimiter, Tiers, TokenBucketLimiter, parse_limit
from .retries import RetryBudget, RetryPolicy, retry
from .task import ReliableTask

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BadLimit",
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpen",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterStore",
    "DuplicateExecution",
    "DuplicateMessage",
    "GCRALimiter",
    "Idempotency",
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyKeyError",
    "IdempotencyKeyMismatch",
    "IdempotencyKeyReused",
    "IdempotencyMiddleware",
    "KeyInProgress",
    "LeaderScheduler",
    "Limit",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "MessageTooLarge",
    "PoisonMessage",
    "PostgresAdvisoryLock",
    "QueueFull",
    "QuorumUnavailable",
    "RateLimit",
    "RedisLock",
    "Redlock",
    "ReliableConfig",
    "ReliableError",
    "ReliableTask",
    "ResultNotSerializable",
    "RetryBudget",
    "RetryPolicy",
    "SerializationError",
    "SlidingWindowLimiter",
    "StaleFencingToken",
    "Tiers",
    "TokenBucketLimiter",
    "TransactionError",
    "UnknownOptionError",
    "beat_schedule",
    "circuit_breaker",
    "fenced_set",
    "fenced_update",
    "fenced_upsert",
    "get_config",
    "idempotent_execute",
    "install",
    "parse_limit",
    "retry",
]
