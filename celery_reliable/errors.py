"""Exceptions raised by celery-reliable.

Every exception derives from :class:`ReliableError`::

    ReliableError
    ├── ConfigurationError          a setting or task option is wrong
    │   ├── UnknownOptionError      a task option or setting name nobody knows
    │   └── BadLimit                a rate limit ("100/s burst 200") that cannot be read
    ├── IdempotencyError
    │   ├── IdempotencyKeyError      the key cannot be built from the call
    │   ├── IdempotencyKeyMismatch   same key, different arguments
    │   │   └── IdempotencyKeyReused an HTTP Idempotency-Key sent again with another request (422)
    │   ├── KeyInProgress            the key runs elsewhere (eager calls only)
    │   │   └── IdempotencyInProgress an HTTP request with this Idempotency-Key is still running (409)
    │   ├── DuplicateExecution       another execution already committed this key
    │   ├── DuplicateMessage         the consumer inbox already holds this message id (rolled back)
    │   └── ResultNotSerializable    the task's result cannot be stored as JSON
    ├── LockError
    │   ├── LockNotAcquired          the lock is held elsewhere (timeout, or not blocking)
    │   ├── LockLost                 a held lock expired or was taken over
    │   └── QuorumUnavailable        Redlock could not reach a majority of its nodes
    ├── StaleFencingToken            a write carried an older fencing token than the resource's
    ├── CircuitOpen                  a circuit breaker refused the call (retry_after says when to try)
    ├── BulkheadFull                 every slot of a bulkhead is leased (retry_after says when to look again)
    ├── QueueFull                    a queue holds max_queue_depth messages or more; nothing was published
    ├── MessageTooLarge              a task's arguments exceed reliable_max_message_bytes
    ├── PoisonMessage                a task id whose worker died on every delivery (dead-lettered)
    ├── SerializationError           arguments that cannot be encoded as JSON
    ├── TransactionError             misuse of ``self.transaction()``
    ├── BackendUnavailable           Redis or the database cannot be reached
    ├── EventStoreError              (celery_reliable.eventstore)
    │   ├── ConcurrencyConflict      a stream is not at the version the append expected
    │   ├── DuplicateEvent           an event id the store already holds
    │   ├── UnknownEventType         an aggregate has no apply method for an event's type
    │   └── UnknownProjection        no projection of that name
    └── SagaError                    (celery_reliable.saga)
        ├── SagaDefinitionError      a saga or step declared wrongly
        ├── SagaNotFound             no saga with that id
        ├── SagaConflict             a saga id started again with another payload
        └── StepResultError          a step returned something other than a JSON dict or None
"""

from __future__ import annotations

from typing import Any


class ReliableError(Exception):
    """Root of every error raised by celery-reliable.

    ``args`` always match the constructor's parameters, so an error raised in a worker
    comes back from ``AsyncResult.get()`` as the same class (Celery rebuilds exceptions
    from their type and ``args``); the message is rendered by ``__str__``.
    """

    message: str = ""

    def __str__(self) -> str:
        return self.message or super().__str__()


class ConfigurationError(ReliableError, ValueError):
    """A ``reliable_*`` setting or a task option has a wrong value or type.

    Attributes:
        name: the setting or option at fault.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = f"{name}: {message}"
        super().__init__(name, message)


class UnknownOptionError(ConfigurationError):
    """A ``reliable_*`` setting or a ReliableTask option that does not exist."""


class BadLimit(ConfigurationError):
    """A rate limit that cannot be read or holds impossible numbers.

    The message shows the accepted forms.

    Attributes:
        text: what was given (a string such as ``"100/x"``, or the numbers of a ``Limit``).
        reason: what is wrong with it.
    """

    #: The accepted forms, quoted by every message.
    FORMS = (
        "write '<count>/<period>', the period being s, m, h or d (second, minute, hour, day) with an optional "
        "multiple, and optionally ' burst <n>': '100/s', '10/m', '1000/h', '5000/d', '10/5s', '100/s burst 200'"
    )

    def __init__(self, text: object, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__("limit", f"{text!r}: {reason}; {self.FORMS}")
        self.args = (text, reason)


class IdempotencyError(ReliableError):
    """Base class of idempotency-key errors.

    Attributes:
        key: the idempotency key concerned, when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        self.message = message
        super().__init__(message, key)


class IdempotencyKeyError(IdempotencyError, ValueError):
    """The idempotency key could not be derived from the call's arguments."""


class IdempotencyKeyMismatch(IdempotencyError):
    """The key was used before with different arguments.

    Replaying the stored result would answer a different request, so the call fails
    instead.

    Attributes:
        stored_fingerprint: fingerprint of the arguments the key was first used with.
        fingerprint: fingerprint of this call's arguments.
    """

    def __init__(self, key: str, stored_fingerprint: str, fingerprint: str) -> None:
        self.stored_fingerprint = stored_fingerprint
        self.fingerprint = fingerprint
        super().__init__(
            f"idempotency key {key!r} was first used with different arguments "
            f"(stored fingerprint {stored_fingerprint[:12]}…, this call {fingerprint[:12]}…); "
            "use a new key for a new request",
            key,
        )
        self.args = (key, stored_fingerprint, fingerprint)


class KeyInProgress(IdempotencyError):
    """The key is being executed elsewhere; raised only where deferring is impossible.

    Attributes:
        retry_after: seconds the other execution's lease still runs.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"idempotency key {key!r} is in progress elsewhere; try again in {retry_after:.1f}s", key)
        self.args = (key, retry_after)


class DuplicateExecution(IdempotencyError):
    """Another execution of this key already committed; this transaction was rolled back.

    Raised out of ``self.transaction()``; ReliableTask catches it and returns the stored
    result, so a task body normally never sees it escape.
    """


class DuplicateMessage(IdempotencyError):
    """The consumer already processed this message; this transaction was rolled back.

    Raised out of ``self.transaction()`` for a task with the ``inbox`` option; ReliableTask
    catches it and ends the task with ``None``, so a task body normally never sees it escape.

    Attributes:
        consumer: the consumer's name.
        message_id: the message's id.
    """

    def __init__(self, consumer: str, message_id: str) -> None:
        self.consumer = consumer
        self.message_id = message_id
        super().__init__(
            f"consumer {consumer!r} already processed message {message_id!r}; this transaction was rolled back",
            f"{consumer}|{message_id}",
        )
        self.args = (consumer, message_id)


class IdempotencyKeyReused(IdempotencyKeyMismatch):
    """An HTTP ``Idempotency-Key`` came back with a different request (answer 422).

    Attributes:
        endpoint: the scope the key was used in (``"POST /payments"``, ``"/payments"``).
        status_code: the HTTP status to answer, 422.
    """

    status_code = 422

    def __init__(self, key: str, endpoint: str, stored_fingerprint: str, fingerprint: str) -> None:
        super().__init__(key, stored_fingerprint, fingerprint)
        self.endpoint = endpoint
        self.message = (
            f"Idempotency-Key {key!r} was already used for {endpoint} with a different request; "
            "send the same request again, or use a new key for a new request"
        )
        self.args = (key, endpoint, stored_fingerprint, fingerprint)


class IdempotencyInProgress(KeyInProgress):
    """An HTTP request with this ``Idempotency-Key`` is still being processed (answer 409).

    Attributes:
        endpoint: the scope the key was used in.
        retry_after: seconds until the running request's lock runs out, at most.
        status_code: the HTTP status to answer, 409.
    """

    status_code = 409

    def __init__(self, key: str, endpoint: str, retry_after: float) -> None:
        super().__init__(key, retry_after)
        self.endpoint = endpoint
        self.message = (
            f"a request with Idempotency-Key {key!r} for {endpoint} is still in progress "
            f"(it holds the key for at most {retry_after:.1f}s more); retry shortly to get its response"
        )
        self.args = (key, endpoint, retry_after)


class ResultNotSerializable(IdempotencyError, TypeError):
    """A task with an idempotency key returned a value that is not JSON."""


class LockError(ReliableError):
    """Base class of lock errors.

    Attributes:
        name: the lock's name.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = f"lock {name!r}: {message}"
        super().__init__(name, message)


class LockNotAcquired(LockError):
    """The lock is held by someone else and could not be acquired in time.

    Attributes:
        retry_after: seconds until the holder's lease runs out, when known.
    """

    def __init__(self, name: str, message: str = "held elsewhere", retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(name, message)
        self.args = (name, message, retry_after)


class LockLost(LockError):
    """A lock this process held expired or was taken over before it was released.

    Work done after the loss may have overlapped another holder; writes guarded by the
    fencing token are still rejected by the resource.
    """


class QuorumUnavailable(LockError, ConnectionError):
    """Redlock could not reach a majority of its nodes, so no lock can be granted.

    Attributes:
        reachable: nodes that answered.
        needed: the quorum.
    """

    def __init__(self, name: str, reachable: int, needed: int) -> None:
        self.reachable = reachable
        self.needed = needed
        super().__init__(name, f"only {reachable} node(s) answered, {needed} needed for a majority")
        self.args = (name, reachable, needed)


class StaleFencingToken(ReliableError):
    """A write was refused because the resource has seen a newer fencing token.

    Attributes:
        resource: what was written (for example ``"accounts:42"``).
        token: the token the write carried.
        current: the newest token the resource has accepted, when known.
    """

    def __init__(self, resource: str, token: int, current: int | None = None) -> None:
        self.resource = resource
        self.token = token
        self.current = current
        seen = f" (it has accepted {current})" if current is not None else ""
        self.message = (
            f"write to {resource} refused: fencing token {token} is older than the resource's{seen}; "
            "the lock was lost before this write"
        )
        super().__init__(resource, token, current)


class CircuitOpen(ReliableError):
    """A circuit breaker refused the call: it is OPEN, or HALF_OPEN with every probe out.

    The call was not made. Nothing is wrong with the call itself; try again later.

    Attributes:
        name: the breaker's name.
        retry_after: seconds until the breaker may admit a call (for an OPEN breaker, until
            it lets probes through).
    """

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = retry_after
        self.message = f"circuit breaker {name!r} is open; try again in {retry_after:.1f}s"
        super().__init__(name, retry_after)


class BulkheadFull(ReliableError):
    """Every slot of a bulkhead is leased; the work was not started.

    Nothing is wrong with the work itself; try again later (a ReliableTask defers it
    without holding a worker slot or spending a retry).

    Attributes:
        name: the bulkhead's name.
        size: its size (the most holders at once).
        retry_after: seconds until a slot is likely free.
    """

    def __init__(self, name: str, size: int, retry_after: float) -> None:
        self.name = name
        self.size = size
        self.retry_after = retry_after
        self.message = f"bulkhead {name!r} is full ({size} of {size} slots in use); try again in {retry_after:.2f}s"
        super().__init__(name, size, retry_after)


class QueueFull(ReliableError):
    """A queue already holds ``max_depth`` messages or more; the task was not published.

    Load shedding at the door: the workers are behind, and adding to the backlog would
    only make every message in it later.

    Attributes:
        queue: the queue's name.
        depth: messages waiting in it (a reading at most the depth cache's age old).
        max_depth: the task's ``max_queue_depth``.
    """

    def __init__(self, queue: str, depth: int, max_depth: int) -> None:
        self.queue = queue
        self.depth = depth
        self.max_depth = max_depth
        self.message = (
            f"queue {queue!r} holds {depth:,} messages, at or above max_queue_depth={max_depth:,}; "
            "nothing was published: retry later with backoff, return 503 / Retry-After to your caller, "
            "or add workers to this queue"
        )
        super().__init__(queue, depth, max_depth)


class MessageTooLarge(ReliableError, ValueError):
    """A task's serialized arguments exceed ``reliable_max_message_bytes``; nothing was published.

    Attributes:
        task: the task's name.
        size: the arguments' size in bytes, as the task's serializer encodes them.
        limit: the setting's value.
    """

    def __init__(self, task: str, size: int, limit: int) -> None:
        self.task = task
        self.size = size
        self.limit = limit
        self.message = (
            f"{task}: arguments of {size:,} bytes exceed reliable_max_message_bytes ({limit:,}); "
            "pass a reference (a row id, an object-store key) instead of the data"
        )
        super().__init__(task, size, limit)


class PoisonMessage(ReliableError):
    """A task was delivered more than ``reliable_max_deliveries`` times, its worker dying each time.

    It was dead-lettered as ``poison`` and is not run again; replay it once fixed.

    Attributes:
        task_id: the task's id.
        deliveries: deliveries so far, this one included.
        limit: ``reliable_max_deliveries``.
    """

    def __init__(self, task_id: str, deliveries: int, limit: int) -> None:
        self.task_id = task_id
        self.deliveries = deliveries
        self.limit = limit
        self.message = (
            f"task {task_id} was delivered {deliveries} times and its worker died each time "
            f"(limit reliable_max_deliveries={limit}); dead-lettered as poison, not run again"
        )
        super().__init__(task_id, deliveries, limit)


class SerializationError(ReliableError, TypeError):
    """A value cannot be encoded as JSON.

    Attributes:
        where: what was being encoded (``"args[1]"``, ``"kwargs['when']"``, ...).
    """

    def __init__(self, where: str, value: Any) -> None:
        self.where = where
        kind = value if isinstance(value, str) and value.startswith("<") else f"<{type(value).__name__}>"
        self.message = (
            f"{where} holds a value of type {kind.strip('<>')}, which cannot be stored as JSON; "
            "pass str, int, float (finite), bool, None, list or dict values"
        )
        super().__init__(where, kind)


class TransactionError(ReliableError, RuntimeError):
    """``self.transaction()`` was used where it cannot work."""


class BackendUnavailable(ReliableError, ConnectionError):
    """Redis or the database did not answer.

    Attributes:
        backend: ``"redis"`` or ``"database"``.
    """

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        self.message = f"{backend}: {message}"
        super().__init__(backend, message)
