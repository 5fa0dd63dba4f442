"""ReliableTask: a Celery task base class whose options add reliability guards."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Task
from celery.utils import uuid as celery_uuid

from .breaker_guard import BreakerSpec, compile_breaker
from .bulkhead_guard import BulkheadSpec, compile_bulkhead
from .inbox.option import InboxSpec, compile_inbox
from .jsoncodec import fingerprint
from .locks.task_lock import LockSpec, compile_lock
from .options import IdempotencySpec, check_unknown, compile_idempotency, compile_retry, task_signature
from .rate_option import RateSpec, compile_rate_limit

if TYPE_CHECKING:
    from celery.result import AsyncResult
    from sqlalchemy.orm import Session

#: apply_async options that are plumbing, not part of the message.
_LOCAL_OPTIONS = frozenset({"producer", "connection", "router", "publisher", "result_cls", "add_to_parent"})


class ReliableTask(Task):
    """Base class for tasks with exactly-once effects and a parking lot for "not now".

    Use it with ``@app.task(base=ReliableTask, bind=True, ...)``. Every option is off
    unless set; with none set it behaves exactly like a Celery ``Task``. Unknown option
    names and wrong option values fail when the task is declared.
    """

    #: Idempotency key: a template over the call's arguments (``"charge:{order_id}"``),
    #: a callable with the task's signature returning a str, ``True`` (hash of all
    #: arguments), or an :class:`~celery_reliable.Idempotency` object. A key that
    #: completed returns its stored result without running again.
    idempotency_key: ClassVar[Any] = None

    #: Extra scope for the key (a tenant), as a template or callable.
    idempotency_namespace: ClassVar[Any] = None

    #: How long a completed key replays its result (seconds or timedelta); default
    #: ``reliable_idempotency_ttl`` (24 h).
    idempotency_ttl: ClassVar[Any] = None

    #: Also deduplicate at ``apply_async``: a key already queued, running or done
    #: returns the original task's ``AsyncResult`` instead of publishing again.
    idempotency_on_publish: ClassVar[bool] = False

    #: One body at a time: ``True`` locks on the task's name (whatever the arguments);
    #: see ``lock_key`` for one body per resource. The lock is held only while the body
    #: runs, renewed meanwhile, and expires ``lock_ttl`` after its worker dies. Its
    #: fencing token is ``self.request.fencing_token``.
    singleton: ClassVar[bool] = False

    #: Lock name per call, as a template over the arguments (``"report:{day}"``) or a
    #: callable; implies ``singleton``. Names are not scoped by task, so two tasks with
    #: the same lock key exclude each other.
    lock_key: ClassVar[Any] = None

    #: Lease of the lock (seconds or timedelta); default ``reliable_lock_ttl`` (30 s).
    lock_ttl: ClassVar[Any] = None

    #: ``"redis"``, ``"redlock"`` (``reliable_redlock_urls``) or ``"postgres"`` (advisory
    #: lock on ``reliable_database_url``); default ``reliable_lock_backend``.
    lock_backend: ClassVar[str | None] = None

    #: When the lock is busy: ``"defer"`` (default: parked until the holder releases or
    #: its lease runs out, no retry spent), ``"skip"`` (finish with result ``None`` and a
    #: ``task-lock-skipped`` event) or ``"fail"`` (raise ``LockNotAcquired``).
    on_locked: ClassVar[str | None] = None

    #: How failures are retried and when they are dead-lettered: a
    #: :class:`~celery_reliable.RetryPolicy` (or ``True`` for the defaults: 5 attempts,
    #: full jitter from 100 ms, capped at 30 s). Retries are parked in the deferred set with
    #: the same task id and ``retries + 1``; permanent and exhausted failures are stored in
    #: the dead-letter store. Unset: failures behave as in Celery.
    retry_policy: ClassVar[Any] = None

    #: Limit retries to a share of recent calls: ``True`` (a budget per task name) or a
    #: name shared by the tasks calling one dependency. A retry the budget refuses is
    #: dead-lettered with reason ``budget``.
    retry_budget: ClassVar[Any] = None

    #: A limit shared by every worker: ``"20/s"``, ``"100/m burst 10"``, a dict of tiers
    #: (``{"free": "10/m", "pro": "1000/m"}``) or :class:`~celery_reliable.RateLimit`.
    #: Each call takes a slot of a meter in Redis; a call whose slot is later is parked
    #: until then (no worker slot held, no retry spent, event ``task-rate-limited``).
    #: Written without a burst, the limit is smooth: evenly spaced, never more than the
    #: count in any period. Celery's own ``rate_limit`` is per worker.
    global_rate_limit: ClassVar[Any] = None

    #: The meter of each call, as a template over the arguments (``"tenant:{tenant_id}"``)
    #: or a callable; default the task's name. Tasks with the same key share one meter.
    rate_limit_key: ClassVar[Any] = None

    #: With tiers: the tier of each call, as a template (``"{plan}"``) or a callable.
    rate_limit_tier: ClassVar[Any] = None

    #: How many requests one call counts for: an int or a callable over the arguments.
    rate_limit_cost: ClassVar[Any] = None

    #: Take the slot at ``apply_async`` and park the task until it, so workers only
    #: receive what they may run.
    rate_limit_on_publish: ClassVar[bool] = False

    #: A circuit breaker shared by every worker: a name (options in
    #: ``reliable_circuit_breakers``; defaults: 50% failures over 10 calls, 30 s open) or a
    #: :class:`~celery_reliable.CircuitBreaker`. While it is open, attempts are parked
    #: until it lets probes through (no worker slot held, no retry spent, event
    #: ``task-circuit-open``); retries happen inside it.
    circuit_breaker: ClassVar[Any] = None

    #: What an attempt answers while the breaker is open instead of waiting: a callable
    #: taking the task's arguments, or ``"last_result"`` (the last good result of the same
    #: arguments, kept ``reliable_breaker_fallback_ttl``, at least 5 minutes).
    circuit_breaker_fallback: ClassVar[Any] = None

    #: A cluster-wide cap on running bodies: a tier of ``reliable_bulkheads``
    #: (``"critical"``, ``"standard"``, ``"optional"``) or a
    #: :class:`~celery_reliable.Bulkhead`. Slots are leases renewed while the body runs.
    bulkhead: ClassVar[Any] = None

    #: When the bulkhead is full: ``"defer"`` (default: parked until a slot is likely
    #: free, no retry spent), ``"reject"`` (dead-lettered as ``bulkhead_full``) or a
    #: fallback callable taking the task's arguments, whose answer is the result.
    bulkhead_on_full: ClassVar[Any] = None

    #: Load shedding: ``apply_async`` raises :class:`~celery_reliable.QueueFull` when the
    #: task's queue already holds this many messages.
    max_queue_depth: ClassVar[int | None] = None

    #: Consumer inbox: ``True`` (the message id is the task id, as the outbox publishes
    #: it), a template over the arguments (``"{event_id}"``) or a callable. The id is
    #: recorded first in ``self.transaction()``, with the task's name as the consumer; a
    #: message already recorded rolls the transaction back and ends the task with ``None``
    #: (event ``task-deduplicated``), so a message delivered twice changes state once.
    inbox: ClassVar[Any] = None

    #: How long processed message ids are remembered (seconds or timedelta); default 7 days.
    inbox_ttl: ClassVar[Any] = None

    _reliable_spec: ClassVar[IdempotencySpec | None] = None
    _reliable_lock: ClassVar[LockSpec | None] = None
    _reliable_rate: ClassVar[RateSpec | None] = None
    _reliable_breaker: ClassVar[BreakerSpec | None] = None
    _reliable_bulkhead: ClassVar[BulkheadSpec | None] = None
    _reliable_inbox: ClassVar[InboxSpec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = dict(vars(cls))
        if own.get("_decorated"):
            check_unknown(cls, own)
        cls._reliable_spec = compile_idempotency(cls, own)
        compile_retry(cls)
        sig = task_signature(vars(cls).get("run") or getattr(cls, "run", None))
        cls._reliable_lock = compile_lock(cls, sig)
        cls._reliable_rate = compile_rate_limit(cls, own, sig)
        cls._reliable_breaker = compile_breaker(cls)
        cls._reliable_bulkhead = compile_bulkhead(cls)
        cls._reliable_inbox = compile_inbox(cls, sig)

    @classmethod
    def bind(cls, app: Any) -> Any:
        """Bind to ``app`` and make sure the app's workers run the deferred-set pump."""
        from .install import install_worker_step

        install_worker_step(app)
        return super().bind(app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request_stack.top
        if req is None or req.called_directly or not req.id:
            return super().__call__(*args, **kwargs)
        from .execution import run_guarded

        return run_guarded(self, req, args, kwargs)

    def transaction(self, commit_on_exit: bool = False) -> AbstractContextManager[Session]:
        """A SQLAlchemy session whose commit also records the idempotency key and result.

        Database effects written through it happen exactly once per key, even when a
        worker is killed at any instant: a second execution of the key finds the
        record, rolls its own transaction back, and returns the stored result. For a
        keyed task the commit happens when the task returns, with its result; pass
        ``commit_on_exit=True`` to commit at the end of the block instead (see
        :func:`celery_reliable.transaction.task_transaction`).
        """
        from .transaction import task_transaction

        return task_transaction(self, commit_on_exit=commit_on_exit)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Celery's failure hook; after a hard time limit it frees the killed body's lock."""
        from celery.exceptions import TimeLimitExceeded

        if isinstance(exc, TimeLimitExceeded) and self._reliable_lock is not None:
            from .lock_guard import release_after_kill

            release_after_kill(self, args, kwargs, "hard time limit")
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def check_lock(self) -> None:
        """Raise :class:`~celery_reliable.LockLost` if this execution's lock was lost.

        Call it before a write that must not overlap another holder, and pass
        ``self.request.fencing_token`` with the write so the resource refuses it if the
        loss happens after this check.

        Raises:
            LockError: the task holds no lock (it sets neither ``singleton`` nor ``lock_key``).
            LockLost: the lease ran out or was taken over while the body ran.
        """
        from .locks.task_lock import current_lock

        lock = current_lock.get()
        if lock is None:
            from .errors import LockError

            raise LockError(self.name, "this execution holds no lock (set singleton=True or lock_key=...)")
        lock.check()

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish the task; long countdowns are parked, duplicates can be refused.

        On top of Celery's ``apply_async``: the idempotency key is built now, so a bad
        call fails here with nothing published; with ``idempotency_on_publish`` a key
        already published returns the original ``AsyncResult``; a ``countdown`` or
        ``eta`` beyond ``reliable_defer_threshold`` goes to the deferred set instead of
        an ETA message that workers would hold in memory; with ``rate_limit_on_publish``
        the call takes its rate-limit slot now and is parked until it; with
        ``max_queue_depth`` a call to a queue that full raises ``QueueFull``.
        """
        spec = self._reliable_spec
        publish = partial(
            super().apply_async, args, kwargs, producer=producer, link=link, link_error=link_error, shadow=shadow
        )
        if self.app.conf.task_always_eager:
            return publish(task_id=task_id, **options)
        from .config import get_config
        from .runtime import runtime

        cfg = get_config(self.app)
        if self._reliable_bulkhead is not None and not options.get("retries"):
            from .bulkhead_guard import check_depth, check_tier_known
            from .deferred.pump import republishing

            check_tier_known(self.name, self._reliable_bulkhead, cfg)

            if not republishing.get():  # a parked task coming back was accepted already
                check_depth(self, args, kwargs, options, runtime(self.app))
        task_id = task_id or celery_uuid()
        delay_ms = _delay_ms(options)
        publish_key: str | None = None
        if spec is None and cfg.max_message_bytes is not None:
            _check_size(self.name, args, kwargs, options.get("serializer") or self.serializer, cfg.max_message_bytes)
        if spec is not None:
            call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
            scoped = spec.scoped(self.name, call_args, call_kwargs)
            fingerprint(call_args, call_kwargs)  # arguments JSON cannot hold fail here, unpublished
            if cfg.max_message_bytes is not None:
                serializer = options.get("serializer") or self.serializer
                _check_size(self.name, call_args, call_kwargs, serializer, cfg.max_message_bytes)
            if spec.on_publish:
                ttl_ms = spec.ttl_ms or cfg.idempotency_ttl_ms
                earlier = runtime(self.app).idempotency().publish_once(scoped, task_id, ttl_ms)
                if earlier is not None and earlier != task_id:
                    return self.AsyncResult(earlier)
                publish_key = scoped
        try:
            reason = "retry" if options.get("retries") else "countdown"
            if self._reliable_rate is not None and self._reliable_rate.on_publish and delay_ms <= 0:
                from .rate_guard import shape

                delay_ms, reason = shape(self, args, kwargs, task_id, options, runtime(self.app)), "rate-limited"
                if delay_ms > 0:
                    return self._park(args, kwargs, task_id, link, link_error, shadow, delay_ms, options, reason)
            if delay_ms > 0 and (delay_ms > cfg.defer_threshold_ms or options.get("retries")):  # any retry wait parks
                return self._park(args, kwargs, task_id, link, link_error, shadow, delay_ms, options, reason)
            return publish(task_id=task_id, **options)
        except BaseException:
            if publish_key is not None:
                runtime(self.app).idempotency().forget_publish(publish_key, task_id)
            raise

    def _park(
        self,
        args: Any,
        kwargs: Any,
        task_id: str,
        link: Any,
        link_error: Any,
        shadow: str | None,
        delay_ms: int,
        options: dict[str, Any],
        reason: str,
    ) -> AsyncResult:
        from .runtime import runtime

        opts = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS and k not in ("countdown", "eta")}
        expires = opts.get("expires")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            opts["expires"] = (datetime.now(timezone.utc) + timedelta(seconds=expires)).isoformat()
        elif isinstance(expires, datetime):
            opts["expires"] = expires.isoformat()
        opts.update(task_id=task_id, link=link, link_error=link_error, shadow=shadow)
        sig = self.signature(args, kwargs, **{k: v for k, v in opts.items() if v is not None})
        rt = runtime(self.app)
        deferred = rt.deferred()
        entry = deferred.entry(dict(sig), reason=reason)
        deferred.park(entry, delay_ms)
        from .logs import log_decision_for
        from .logs import logger as decision_logger

        # a retry is logged by the retry policy (or by Celery for self.retry); the key is
        # built only when the line will be written
        if reason != "retry" and decision_logger.isEnabledFor(logging.INFO):
            spec = self._reliable_spec
            key = None if spec is None else spec.scoped(self.name, tuple(args or ()), dict(kwargs or {}))
            log_decision_for(self.name, task_id, "deferred", key, {"reason": reason, "delay_ms": delay_ms})
        return self.AsyncResult(task_id)


def _check_size(name: str, args: Any, kwargs: Any, serializer: str, limit: int) -> None:
    """Refuse arguments whose serialized form exceeds ``limit`` bytes, before anything is published."""
    from kombu.serialization import dumps

    from .errors import MessageTooLarge

    _, _, body = dumps([list(args or ()), dict(kwargs or {})], serializer=serializer)
    size = len(body)
    if size > limit:
        raise MessageTooLarge(name, size, limit)


def _delay_ms(options: dict[str, Any]) -> int:
    countdown = options.get("countdown")
    eta = options.get("eta")
    if countdown is not None:
        return int(float(countdown) * 1000)
    if isinstance(eta, datetime):
        now = datetime.now(eta.tzinfo or timezone.utc) if eta.tzinfo else datetime.now()
        return int((eta - now).total_seconds() * 1000)
    if isinstance(eta, str):
        parsed = datetime.fromisoformat(eta)
        now = datetime.now(parsed.tzinfo) if parsed.tzinfo else datetime.now()
        return int((parsed - now).total_seconds() * 1000)
    return 0
