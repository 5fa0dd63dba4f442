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
from .eventstore import (
    Aggregate,
    ConcurrencyConflict,
    DuplicateEvent,
    EventStoreError,
    NewEvent,
    Projection,
    RecordedEvent,
    UnknownEventType,
    UnknownProjection,
    Upcasters,
    run_command,
)
from .http import IdempotencyMiddleware, idempotent_execute
from .install import install
from .locks import PostgresAdvisoryLock, RedisLock, Redlock, fenced_set, fenced_update, fenced_upsert
from .maintenance import beat_schedule
from .options import Idempotency
from .rate_option import RateLimit
from .ratelimit import GCRALimiter, Limit, SlidingWindowLimiter, Tiers, TokenBucketLimiter, parse_limit
from .retries import RetryBudget, RetryPolicy, retry
from .saga import Saga, SagaConflict, SagaDefinitionError, SagaError, SagaNotFound, Step, StepResultError
from .task import ReliableTask

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "BackendUnavailable",
    "BadLimit",
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterStore",
    "DuplicateEvent",
    "DuplicateExecution",
    "DuplicateMessage",
    "EventStoreError",
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
    "NewEvent",
    "PoisonMessage",
    "PostgresAdvisoryLock",
    "Projection",
    "QueueFull",
    "QuorumUnavailable",
    "RateLimit",
    "RecordedEvent",
    "RedisLock",
    "Redlock",
    "ReliableConfig",
    "ReliableError",
    "ReliableTask",
    "ResultNotSerializable",
    "RetryBudget",
    "RetryPolicy",
    "Saga",
    "SagaConflict",
    "SagaDefinitionError",
    "SagaError",
    "SagaNotFound",
    "SerializationError",
    "SlidingWindowLimiter",
    "StaleFencingToken",
    "Step",
    "StepResultError",
    "Tiers",
    "TokenBucketLimiter",
    "TransactionError",
    "UnknownEventType",
    "UnknownOptionError",
    "UnknownProjection",
    "Upcasters",
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
    "run_command",
]
