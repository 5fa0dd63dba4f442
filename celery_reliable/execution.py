"""One guarded execution of a ReliableTask in a worker.

The order of the guards (DESIGN.md §4): the delivery count (poison cap); for a
rate-limited task, the lookup of a completed key then the rate-limit meter; the circuit
breaker; the bulkhead slot; the retry budget's deposit; the singleton lock; the
idempotency claim. The guards on the app's Redis are asked in one round trip, one
composite script that stops at the first guard that does not grant (see
:mod:`.admission`); then the body runs with its claim and lock renewed by the heartbeat;
then completion (plus the database write when one is configured). Any "not now" parks
the task in the deferred set.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry

from . import _failpoints, breaker_guard, bulkhead_guard, failure_guard, lock_guard, poison, rate_guard
from .admission import Admission, Ask
from .errors import IdempotencyKeyMismatch, KeyInProgress, ResultNotSerializable, SerializationError
from .events import emit
from .heartbeat import Lease, heartbeat
from .idempotency import db_store
from .idempotency.records import COMMITTED, COMPLETED, Record
from .jsoncodec import dumps, fingerprint
from .logs import log_decision
from .runtime import Runtime, runtime

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context
    from sqlalchemy.orm import Session

    from .breaker.state import Permit
    from .inbox.option import InboxEntry

logger = logging.getLogger("celery_reliable")


@dataclass
class Execution:
    """State of the execution running in this context (never stored on the task)."""

    task_name: str
    task_id: str
    scoped: str | None = None
    fingerprint: str = ""
    ttl_ms: int = 0
    transaction_used: bool = False
    committed: bool = False
    duplicate: Record | None = None
    pending: Session | None = None
    inbox: InboxEntry | None = None
    inbox_duplicate: bool = False

    def rollback_pending(self) -> None:
        """Roll back a transaction still waiting for the task's result."""
        if self.pending is not None:
            session, self.pending = self.pending, None
            try:
                session.rollback()
            finally:
                session.close()

    def commit_pending(self, result_json: str, redis_url: str) -> Record:
        """Write the result into the record and commit it with the task's effects."""
        assert self.pending is not None and self.scoped is not None
        session, self.pending = self.pending, None
        try:
            db_store.complete_in(session.connection(), self.scoped, self.task_id, result_json)
            _failpoints.hit("before_commit", self.task_id, redis_url)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        self.committed = True
        _failpoints.hit("after_commit", self.task_id, redis_url)
        return Record(self.fingerprint, self.task_id, COMPLETED, result_json)


current: ContextVar[Execution | None] = ContextVar("celery_reliable_execution", default=None)

#: Set once this execution calls the task's body: a replayed duplicate, a skipped lock or a
#: guard's own failure did not call the dependency, which the circuit breaker must know.
body_entered: ContextVar[bool] = ContextVar("celery_reliable_body_entered", default=False)


def defer(
    task: Task,
    req: Context,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rt: Runtime,
    delay_ms: int,
    reason: str,
    wake: Any = None,
    event: str = "task-deferred",
    jitter: bool = True,
    headers: dict[str, Any] | None = None,
    **fields: Any,
) -> NoReturn:
    """Park this delivery in the deferred set and end it without running (no retry spent).

    ``wake``: a busy lock whose release should bring this delivery back before its due time.
    ``event``: the Celery event that says so (with ``reason``, ``delay_ms`` and ``fields``).
    ``jitter``: add ``reliable_defer_jitter`` (not for a rate-limit booking, which is exact).
    ``headers``: set on the parked message. A rate-limit booking the delivery carried is
    dropped unless given again here: a task parked for another reason books anew on return.
    """
    from .rate_guard import SLOT_HEADER

    sig = task.signature_from_request(req, args, kwargs)
    carried = {k: v for k, v in (sig.options.get("headers") or {}).items() if k != SLOT_HEADER}
    sig.options["headers"] = {**carried, **(headers or {})}
    entry = rt.deferred().entry(dict(sig), reason)
    if jitter:
        delay_ms += rt.jitter_ms()
    waiters_key = getattr(wake, "waiters_key", None)
    if waiters_key is not None:  # a RedisLock: its release wakes the longest-waiting parked task
        rt.deferred().park_waiting(entry, delay_ms, wake.key)
        rt.redis.set(waiters_key, "1", px=delay_ms + 5000)
    else:
        rt.deferred().park(entry, delay_ms)
    emit(task, event, rt.config.send_events, reason=reason, delay_ms=delay_ms, **fields)
    raise Ignore()


def replay(task: Task, rt: Runtime, scoped: str, fp: str, record: Record) -> Any:
    """Return a stored result for a duplicate, after checking the arguments match."""
    if record.fingerprint != fp:
        raise IdempotencyKeyMismatch(scoped, record.fingerprint, fp)
    lost_result = record.state == COMMITTED
    emit(
        task,
        "task-deduplicated",
        rt.config.send_events,
        log_level=logging.WARNING if lost_result else logging.INFO,
        log_note="the key committed its effects but its result was not stored; returning None" if lost_result else "",
        key=scoped,
        original_task_id=record.task_id,
    )
    return record.result


def run_guarded(task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the task body under its guards; the worker's view of one delivery.

    Around the guards: a redelivery is counted (a task id past ``reliable_max_deliveries``
    is dead-lettered as poison, not run), and a failure goes to the retry policy.
    """
    rt = runtime(task.app)
    deliveries = None
    if poison.redelivered(req) and not req.is_eager:
        deliveries = poison.count(rt.redis, rt.config.key_prefix, req.id)
        if deliveries > rt.config.max_deliveries:
            failure_guard.poison(task, req, args, kwargs, rt, deliveries)
    adm = Admission()
    try:
        _prepare(task, req, args, kwargs, rt, adm)
        adm.ask(rt)
        if task._reliable_rate is not None and not req.is_eager:
            done = _stored_result(task, args, kwargs, rt, adm.get("done"))
            if done is not None:  # a completed key answers at once, without taking a rate-limit slot
                return done[0]
            rate_guard.admit(task, req, args, kwargs, rt, adm.get("rate"))  # raises Ignore when parked
        return _run_admitted(task, req, args, kwargs, rt, adm)
    except (Ignore, Reject, Retry):
        raise
    except Exception as exc:
        _give_back_unused(task, rt, adm)  # before a retry is published, so it finds them free
        failure_guard.on_failure(task, req, args, kwargs, exc, rt)  # raises Retry to retry
        raise
    finally:
        if deliveries is not None:
            poison.forget(rt.redis, rt.config.key_prefix, req.id)
        _give_back_unused(task, rt, adm)


def _prepare(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, adm: Admission
) -> None:
    """Collect the questions of the task's guards on the app's Redis, in admission order.

    The questions end at the first guard the task has that cannot join (a Redlock or
    PostgreSQL lock, a breaker or bulkhead on another client): it asks on its own, and
    the guards after it must not be granted before it has said yes.
    """
    spec = task._reliable_spec
    scoped = None if spec is None else spec.scoped(task.name, args, kwargs)
    idem = rt.idempotency()

    def done_ask() -> Ask:
        assert scoped is not None
        return Ask("done", "idem_done", [idem.keys(scoped)[0]], [], {"scoped": scoped})

    def budget_ask() -> Ask | None:
        budget = failure_guard.budget_for(task, rt)
        return Ask("budget", "retry_budget", *budget.request("call")) if budget.client is rt.redis else None

    def claim_ask() -> Ask:
        assert scoped is not None
        owner = bulkhead_guard.owner_of(req)
        keys, claim_args = idem.claim_request(scoped, owner, rt.config.claim_lease_ms)
        if rt.has_database:
            adm.epoch_key = idem.epoch_key
        return Ask("claim", "idem_claim", keys, claim_args, {"scoped": scoped, "owner": owner})

    rated = task._reliable_rate is not None and not req.is_eager
    guards: list[tuple[bool, Any]] = [
        (scoped is not None and rated, done_ask),
        (rated, lambda: rate_guard.prepare(task, req, args, kwargs, rt)),
        (task._reliable_breaker is not None, lambda: breaker_guard.prepare(task, rt)),
        (bulkhead_guard.has_slots(task), lambda: bulkhead_guard.prepare(task, req, rt)),
        (bool(task.retry_budget) and not req.retries, budget_ask),
        (task._reliable_lock is not None, lambda: lock_guard.prepare(task, args, kwargs, rt)),
        (scoped is not None, claim_ask),
    ]
    for present, make in guards:
        if not present:
            continue
        ask = make()
        if ask is None:  # asks on its own, after the admission: so do the guards after it
            return
        adm.add(ask)


def _give_back_unused(task: Task, rt: Runtime, adm: Admission) -> None:
    """Give back what the admission granted but no guard took (an error came between)."""
    for ask in adm.unused_grants():
        ask.used = True  # given back once
        try:
            if ask.guard == "breaker":
                breaker = breaker_guard.breaker_for(task._reliable_breaker, rt)
                breaker.record(breaker.permit_of(ask.reply, ask.state["token"]), "ignored")
            elif ask.guard == "bulkhead":
                bulkhead = bulkhead_guard.bulkhead_for(task._reliable_bulkhead, rt)
                slot = bulkhead.admission_of(ask.state["owner"], ask.reply).slot
                if slot is not None:
                    bulkhead.release(slot)
            elif ask.guard == "lock":
                lock = ask.state["lock"]
                if lock.acquire_answered(ask.state["owner"], ask.reply):
                    lock_guard.give_back(task, rt, lock)  # wakes a task parked for the lock
            elif ask.guard == "claim":
                rt.idempotency().release(ask.state["scoped"], ask.state["owner"])
        except Exception as exc:  # each frees itself after its lease
            logger.warning("%s: could not give back the %s the admission granted: %r", task.name, ask.guard, exc)


def _run_admitted(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, adm: Admission
) -> Any:
    """Run under the circuit breaker and in a bulkhead slot, if the task has them.

    The breaker's permit is asked first and the attempt's outcome recorded after (only
    when the body ran: see :data:`body_entered`); the bulkhead slot is held for the lock,
    the claim and the body, and given back after. A successful body's completion sends
    the slot back and the breaker's success with the claim (:meth:`Admission.finish`).
    """
    permit: Permit | None = None
    if task._reliable_breaker is not None:
        asked = breaker_guard.admit(task, req, args, kwargs, rt, adm.get("breaker"))  # parks the task while open
        if isinstance(asked, breaker_guard.Answer):
            return asked.value
        permit = asked
    started = time.monotonic()
    if permit is not None:
        adm.hold(breaker_guard.success_of(task, rt, permit, adm.get("breaker"), started))
    entered = body_entered.set(False)
    try:
        held = bulkhead_guard.take(task, req, args, kwargs, rt, adm.get("bulkhead"))  # parks or rejects when full
        if isinstance(held, breaker_guard.Answer):
            if permit is not None:  # the fallback answered: the dependency was not called
                breaker_guard.done(task, rt, permit, started, None, None, entered=False)
            return held.value
        adm.hold(bulkhead_guard.release_of(held, rt))
        try:
            if task.retry_budget and not req.retries:
                _deposit(task, rt, adm.get("budget"))
            result = _run_locked(task, req, args, kwargs, rt, adm)
        finally:
            if not adm.released("bulkhead"):
                bulkhead_guard.give_back(held)
    except BaseException as exc:
        if permit is not None and not adm.released("breaker"):
            breaker_guard.done(task, rt, permit, started, exc, None, entered=body_entered.get())
        raise
    else:
        if permit is not None and not adm.released("breaker"):
            breaker_guard.done(task, rt, permit, started, None, result, entered=body_entered.get())
    finally:
        body_entered.reset(entered)
    return result


def _stored_result(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, ask: Ask | None
) -> tuple[Any] | None:
    """The stored result of a keyed task whose key completed (from Redis), as a 1-tuple.

    ``ask``: the lookup, answered in the admission round trip; without an answer Redis
    is asked here.
    """
    spec = task._reliable_spec
    if spec is None:
        return None
    scoped = ask.state["scoped"] if ask is not None else spec.scoped(task.name, args, kwargs)
    try:
        if ask is not None and ask.answered:
            raw = ask.take()
            record = None if raw is None else Record.from_json(raw)
        else:
            record = rt.idempotency().done(scoped)
    except Exception:  # the claim decides later; the lookup only spares a slot
        return None
    if record is None:
        return None
    task.request.idempotency_key = scoped
    return (replay(task, rt, scoped, fingerprint(args, kwargs), record),)


def _deposit(task: Task, rt: Runtime, ask: Ask | None) -> None:
    if ask is not None and ask.answered:  # deposited in the admission round trip
        ask.take()
        return
    try:
        failure_guard.budget_for(task, rt).record_call()
    except Exception as exc:  # the budget is advisory; the task runs
        logger.warning("%s: could not record the call in the retry budget: %r", task.name, exc)


def _run_locked(
    task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], rt: Runtime, adm: Admission
) -> Any:
    """Run under the task's singleton lock, if it has one."""
    lock_spec = task._reliable_lock
    if lock_spec is None:
        return _run_keyed(task, req, args, kwargs, adm)
    from .locks.task_lock import current_lock

    lock = lock_guard.take(task, req, args, kwargs, rt, lock_spec, adm.get("lock"))
    if lock is lock_guard.SKIPPED:
        return None
    adm.hold(lock_guard.release_of(task, rt, lock))
    token = current_lock.set(lock)
    try:
        return _run_keyed(task, req, args, kwargs, adm)
    finally:
        current_lock.reset(token)
        if not adm.released("lock"):
            lock_guard.give_back(task, rt, lock)


def _run_keyed(task: Task, req: Context, args: tuple[Any, ...], kwargs: dict[str, Any], adm: Admission) -> Any:
    """Run the body under its idempotency key, if it has one.

    The claim was asked in the admission round trip (when answered there, with whether
    Redis held its epoch then); otherwise the key is claimed here. A successful body's
    completion gives the outer guards' grants back in the same round trip.
    """
    spec = task._reliable_spec
    inbox_spec = task._reliable_inbox
    inbox = None if inbox_spec is None else inbox_spec.entry(task.name, req.id, args, kwargs)
    rt = runtime(task.app)
    if spec is None:
        plain = Execution(task.name, req.id, inbox=inbox)
        token = current.set(plain)
        try:
            body_entered.set(True)
            result = task.run(*args, **kwargs)
        except BaseException:
            if plain.inbox_duplicate:
                return _inbox_duplicate(task, plain)
            raise
        finally:
            current.reset(token)
        adm.finish(rt, None)
        return result

    ask = adm.get("claim")
    cfg = rt.config
    if ask is not None:
        scoped, owner = ask.state["scoped"], ask.state["owner"]
    else:
        scoped = spec.scoped(task.name, args, kwargs)
        owner = bulkhead_guard.owner_of(req)
    req.idempotency_key = scoped  # the stable key to pass to downstream APIs
    fp = fingerprint(args, kwargs)
    ttl_ms = spec.ttl_ms or cfg.idempotency_ttl_ms
    idem = rt.idempotency()

    if ask is not None and ask.answered:
        claim = idem.claim_of(ask.take(), adm.epoch)
    else:
        claim = idem.claim(scoped, owner, cfg.claim_lease_ms, check_epoch=rt.has_database)
    if claim.status == "done":
        assert claim.record is not None
        return replay(task, rt, scoped, fp, claim.record)
    if claim.status == "busy":
        if req.is_eager:
            raise KeyInProgress(scoped, claim.busy_ms / 1000.0)
        defer(task, req, args, kwargs, rt, min(cfg.busy_delay_ms, claim.busy_ms + 50), reason="key-in-progress")
    if rt.has_database and not claim.warm:
        with rt.engine().connect() as conn:
            stored = db_store.fetch(conn, scoped)
        if stored is not None:
            idem.cache(scoped, stored, ttl_ms)
            idem.release(scoped, owner)
            return replay(task, rt, scoped, fp, stored)

    log_decision(task, "claimed", {"key": scoped, "lease_ms": cfg.claim_lease_ms})
    _, claim_key, _ = idem.keys(scoped)
    renew = partial(idem.renew, claim_key, owner, cfg.claim_lease_ms)
    lease = heartbeat().add(Lease(scoped, cfg.claim_lease_ms, renew))
    ex = Execution(task.name, req.id, scoped, fp, ttl_ms, inbox=inbox)
    token = current.set(ex)
    try:
        _failpoints.hit("after_claim", req.id, cfg.redis_url)
        try:
            body_entered.set(True)
            result = task.run(*args, **kwargs)
            if ex.duplicate is None:
                try:
                    result_json = dumps(result, where=f"result of {task.name}")
                except SerializationError as exc:
                    raise ResultNotSerializable(str(exc), scoped) from exc
        except BaseException:
            ex.rollback_pending()
            if ex.duplicate is None:  # a duplicate is answered below, whatever the body raised
                if ex.committed:  # committed on exit: the key is spent even though the task failed after
                    idem.complete(scoped, owner, Record(fp, req.id, COMMITTED, None), ttl_ms)
                else:
                    idem.release(scoped, owner)
                if ex.inbox_duplicate:
                    return _inbox_duplicate(task, ex)
                raise
        if ex.duplicate is not None:
            idem.complete(scoped, owner, ex.duplicate, ttl_ms)
            return replay(task, rt, scoped, fp, ex.duplicate)
        if lease.lost.is_set():
            logger.warning(
                "%s[%s]: the claim on %r was lost while the body ran (Redis lost it, or the lease ran out); "
                "another execution may have run at the same time. Database effects stay exactly-once.",
                task.name,
                req.id,
                scoped,
            )
        try:
            if ex.pending is not None:
                record = ex.commit_pending(result_json, cfg.redis_url)
            elif rt.has_database:
                record = db_store.store_result(
                    rt.engine(), scoped, task.name, fp, req.id, result_json, ttl_ms, committed=ex.committed
                )
            else:
                record = Record(fp, req.id, COMPLETED, result_json)
        except BaseException:
            # Nothing is known to be stored: free the key for the retry. Had the commit in
            # fact gone through, the retry's insert finds the record and rolls back.
            idem.release(scoped, owner)
            raise
        adm.finish(rt, ("idem_complete", *idem.complete_request(scoped, owner, record, ttl_ms)))
        if record.task_id == req.id:  # otherwise the replay below logs it as deduplicated
            log_decision(task, "completed", {"key": scoped, "state": record.state})
        _failpoints.hit("before_ack", req.id, cfg.redis_url)
        if record.task_id != req.id:  # another execution got there first (Redis had lost the claim)
            return replay(task, rt, scoped, fp, record)
        return result
    finally:
        ex.rollback_pending()
        heartbeat().remove(lease)
        current.reset(token)


def _inbox_duplicate(task: Task, ex: Execution) -> None:
    """End an execution whose message the inbox already holds (its transaction rolled back)."""
    assert ex.inbox is not None
    rt = runtime(task.app)
    emit(
        task,
        "task-deduplicated",
        rt.config.send_events,
        log_note="already processed by this consumer; rolled back, nothing done",
        reason="inbox",
        message_id=ex.inbox.message_id,
    )
    return None
