"""The relay: claim pending outbox rows, publish them, mark them published, in one transaction.

A round claims up to ``batch`` due pending rows with ``SELECT ... FOR UPDATE SKIP LOCKED``
in ``id`` order, publishes them through the app's producer pool with ``task_id`` =
``message_id``, marks them published and commits. Several relays run at once: each
skips the rows another holds. A relay killed after publishing and before its commit
leaves its rows pending, so they are published again (at least once; consumers
deduplicate on the task id). There is no high-water mark: a row whose transaction commits
after a higher id is simply found pending later.

Ordering keys. A keyed row is claimable only when no lower row of its key is pending or
dead (the key's *head*); after the heads, the same transaction also claims the rows that
follow a claimed head, contiguously, so one relay drains a key in order while every other
relay sees the head locked and the rest blocked. Within a round rows are published in id
order; when one fails, the rest of its key waits. A dead row keeps its key blocked until
it is requeued or discarded (:mod:`.admin`): publishing later messages of the key would
break the order the key promises. Rows without a key never wait for each other.

Failures. A row the relay cannot publish (a task name its app has not registered, when
``reliable_outbox_require_registered``; the broker refusing the message; arguments that no
longer decode) spends one attempt and is due again after ``retry_base * 2**n`` seconds,
capped at ``retry_cap``, with equal jitter; after ``max_attempts`` it is parked as dead
with ``last_error``. Other rows go on. A broker that cannot be reached at all is not the
row's fault: the round stops there, the row is put back a ``retry_base`` later without
spending an attempt (so a message that breaks the connection cannot hold up the ones
behind it), rows published before it are marked, and the run ends.

Tasks the relay's app has registered are published through their own ``apply_async``, so
ReliableTask options that act at publish time (parking long countdowns, publish-time
deduplication) apply; other names go through ``app.send_task``. SQLite has no row locks:
relays serialise on its write lock, and two relays may publish a row twice.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, or_, select, update

from .. import _failpoints, jsoncodec
from ..retries.jitter import draw
from .model import DEAD, PENDING, PUBLISHED, outbox
from .settings import OutboxConfig, outbox_config

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Producer
    from sqlalchemy.engine import Connection, Engine, Row

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxMessage:
    """A claimed row, decoded: what a publisher sends."""

    id: int
    message_id: str
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    ordering_key: str | None
    attempts: int


#: Sends one message through a producer; raises when it cannot.
Publisher = Callable[["Producer", OutboxMessage], None]


@dataclass
class RelayStats:
    """What one relay run did."""

    published: int = 0
    retried: int = 0
    dead: int = 0
    rounds: int = 0
    broker_unavailable: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """The counts (the relay task's result)."""
        return {
            "published": self.published,
            "retried": self.retried,
            "dead": self.dead,
            "rounds": self.rounds,
            "broker_unavailable": self.broker_unavailable,
        }


def publish_message(app: Celery, producer: Producer, message: OutboxMessage, require_registered: bool = True) -> None:
    """The default publisher: the registered task's ``apply_async``, else ``send_task``.

    Raises:
        celery.exceptions.NotRegistered: an unknown name while ``require_registered``.
    """
    from celery.exceptions import NotRegistered

    options = dict(message.options)
    for name in ("eta", "expires"):
        if isinstance(options.get(name), str):
            options[name] = datetime.fromisoformat(options[name])
    task = app.tasks.get(message.task_name)
    if task is not None:
        task.apply_async(message.args, message.kwargs, task_id=message.message_id, producer=producer, **options)
    elif require_registered:
        raise NotRegistered(message.task_name)
    else:
        app.send_task(
            message.task_name, message.args, message.kwargs, task_id=message.message_id, producer=producer, **options
        )


def relay_outbox(
    app: Celery,
    *,
    engine: Engine | None = None,
    batch: int | None = None,
    run_limit: float | None = None,
    publisher: Publisher | None = None,
) -> dict[str, int]:
    """Publish due outbox rows until none is left, the broker is unreachable, or ``run_limit`` passes.

    Args:
        app: the Celery app whose producer pool and settings are used.
        engine: the database (default: ``reliable_database_url``).
        batch: rows per transaction (default ``reliable_outbox_batch``).
        run_limit: seconds after which no new round starts (default ``reliable_outbox_run_limit``).
        publisher: sends one message (default :func:`publish_message`); tests inject faults here.

    Returns:
        Counts: ``published``, ``retried`` (failed, due again later), ``dead``, ``rounds``,
        ``broker_unavailable`` (1 when the run stopped because the broker could not be reached).
    """
    return run(app, engine=engine, batch=batch, run_limit=run_limit, publisher=publisher).as_dict()


def run(
    app: Celery,
    *,
    engine: Engine | None = None,
    batch: int | None = None,
    run_limit: float | None = None,
    publisher: Publisher | None = None,
) -> RelayStats:
    """:func:`relay_outbox`, returning the :class:`RelayStats` (with the errors seen)."""
    cfg = outbox_config(app)
    stats = RelayStats()
    if engine is None:
        if not cfg.database_url:
            return stats
        from ..clients import engine_for

        engine = engine_for(cfg.database_url)
    size = batch or cfg.batch
    limit_s = cfg.run_limit_ms / 1000.0 if run_limit is None else run_limit
    send = publisher or partial(publish_message, app, require_registered=cfg.require_registered)
    deadline = time.monotonic() + limit_s
    # A run claims only rows that were due when it started: it never comes back, however
    # slowly its rounds go, to a row it failed itself (its backoff is the next run's).
    due_by = datetime.now(timezone.utc)
    while True:
        stats.rounds += 1
        claimed = _round(app, engine, cfg, send, size, stats, due_by)
        if not claimed or stats.broker_unavailable or time.monotonic() >= deadline:
            return stats


def _due(now: datetime) -> Any:
    return or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now)


def _claim(conn: Connection, size: int, now: datetime) -> list[Row[Any]]:
    """Lock up to ``size`` publishable rows: heads first, then the rows following each keyed head."""
    o = outbox
    earlier = outbox.alias("earlier")
    blocked = exists().where(
        earlier.c.ordering_key == o.c.ordering_key,
        earlier.c.state.in_((PENDING, DEAD)),
        earlier.c.id < o.c.id,
    )
    heads = (
        select(o)
        .where(o.c.state == PENDING, _due(now), or_(o.c.ordering_key.is_(None), ~blocked))
        .order_by(o.c.id)
        .limit(size)
        .with_for_update(skip_locked=True, of=o)
    )
    rows = list(conn.execute(heads).all())
    room = size - len(rows)
    head_of = {r.ordering_key: r.id for r in rows if r.ordering_key is not None}
    if not head_of or room <= 0:
        return rows
    followers = (
        select(o)
        .where(
            o.c.ordering_key.in_(list(head_of)),
            o.c.state.in_((PENDING, DEAD)),
            o.c.id > min(head_of.values()),
        )
        .order_by(o.c.ordering_key, o.c.id)
        .limit(room)
        # No SKIP LOCKED: a skipped row would leave a gap in the key's run. Nothing else
        # locks these rows (other relays see the head locked and the rest blocked).
        .with_for_update(of=o)
    )
    stopped: set[str] = set()
    for r in conn.execute(followers).all():
        key = r.ordering_key
        if r.id <= head_of[key] or key in stopped:
            continue
        if r.state != PENDING or (r.next_attempt_at is not None and _aware(r.next_attempt_at) > now):
            stopped.add(key)  # the key's run ends at its first row that may not go now
            continue
        rows.append(r)
    rows.sort(key=lambda r: r.id)
    return rows


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _decode(row: Row[Any]) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        message_id=row.message_id,
        task_name=row.task_name,
        args=jsoncodec.loads(row.args),
        kwargs=jsoncodec.loads(row.kwargs),
        options=jsoncodec.loads(row.options),
        ordering_key=row.ordering_key,
        attempts=row.attempts,
    )


def _round(
    app: Celery, engine: Engine, cfg: OutboxConfig, send: Publisher, size: int, stats: RelayStats, due_by: datetime
) -> int:
    """One claim-publish-mark transaction; returns how many rows it claimed."""
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        rows = _claim(conn, size, min(now, due_by))
        if not rows:
            return 0
        with app.producer_or_acquire() as producer:
            kinds = _ErrorKinds(producer.connection)
            try:
                with _batched(producer, len(rows)):
                    published, failed, unreachable = _publish_rows(rows, send, producer, kinds)
            except Exception as exc:
                # The pipelined flush failed: which messages got through is unknown, so
                # publish them one at a time to learn which row fails (at least once).
                logger.info("celery-reliable: outbox batch flush failed (%s), publishing one by one", _describe(exc))
                published, failed, unreachable = _publish_rows(rows, send, producer, kinds)
        _failpoints.hit("outbox_before_mark", rows[0].message_id, app.conf.get("reliable_redis_url") or "")
        done_at = datetime.now(timezone.utc)
        if published:
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(published))
                .values(state=PUBLISHED, published_at=done_at, next_attempt_at=None)
            )
        for bad_row, error in failed:
            _record_failure(conn, cfg, bad_row, error, now, stats)
        if unreachable is not None:
            why = _describe(unreachable[1])
            stats.broker_unavailable = 1
            stats.errors.append(why)
            retry_at = now + timedelta(milliseconds=cfg.retry_base_ms)
            conn.execute(
                update(outbox)
                .where(outbox.c.id == unreachable[0].id)
                .values(next_attempt_at=retry_at, last_error=f"broker unreachable: {why}")
            )
            logger.warning("celery-reliable: outbox relay cannot reach the broker: %s", why)
    stats.published += len(published)
    return len(rows)


_Outcome = tuple[list[int], list[tuple["Row[Any]", BaseException]], "tuple[Row[Any], BaseException] | None"]


def _publish_rows(rows: list[Row[Any]], send: Publisher, producer: Producer, kinds: _ErrorKinds) -> _Outcome:
    """Publish ``rows`` in order: the ids that went, the rows refused, the row the broker was unreachable at."""
    published: list[int] = []
    failed: list[tuple[Row[Any], BaseException]] = []
    held: set[str] = set()  # keys with a failed row in this round: the rest of the key waits
    for row in rows:
        if row.ordering_key in held:
            continue
        try:
            send(producer, _decode(row))
        except Exception as exc:
            if kinds.unreachable(exc):
                return published, failed, (row, exc)
            failed.append((row, exc))
            if row.ordering_key is not None:
                held.add(row.ordering_key)
        else:
            published.append(row.id)
    return published, failed, None


def _batched(producer: Producer, size: int) -> Any:
    """kombu's publish batch (one pipelined round trip on Redis; immediate elsewhere), when kombu has it."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=max(4 * size, 1000)) if batch is not None else contextlib.nullcontext()


def _record_failure(
    conn: Connection, cfg: OutboxConfig, row: Row[Any], exc: BaseException, now: datetime, stats: RelayStats
) -> None:
    attempts = row.attempts + 1
    error = _describe(exc)
    stats.errors.append(error)
    if attempts >= cfg.max_attempts:
        values: dict[str, Any] = {"state": DEAD, "attempts": attempts, "last_error": error, "next_attempt_at": None}
        stats.dead += 1
        logger.error(
            "celery-reliable: outbox message %s (%s) parked as dead after %d attempts: %s",
            row.message_id,
            row.task_name,
            attempts,
            error,
        )
    else:
        delay = draw("equal", row.attempts, cfg.retry_base_ms / 1000.0, cfg.retry_cap_ms / 1000.0, 2.0, None, random)
        values = {"attempts": attempts, "last_error": error, "next_attempt_at": now + timedelta(seconds=delay)}
        stats.retried += 1
        logger.warning(
            "celery-reliable: outbox message %s (%s) not published (attempt %d), again in %.1fs: %s",
            row.message_id,
            row.task_name,
            attempts,
            delay,
            error,
        )
    conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))


class _ErrorKinds:
    """Tells a broker that cannot be reached from a broker (or a check) refusing one message."""

    def __init__(self, connection: Any) -> None:
        from kombu.exceptions import OperationalError

        # kombu's Redis transport lists KeyError among its connection errors; a lookup
        # failure (an unregistered task) is the row's fault, not the broker's.
        transport = tuple(c for c in connection.connection_errors if not issubclass(c, LookupError))
        self.lost: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, *transport)
        self.refused: tuple[type[BaseException], ...] = tuple(connection.channel_errors)

    def unreachable(self, exc: BaseException) -> bool:
        """True when ``exc`` (or what it wraps) says the connection failed, not the message.

        kombu wraps both in ``OperationalError``: a refusal (Redis ``OOM``, an AMQP channel
        error) is found in the chain of causes and wins.
        """
        chain: list[BaseException] = []
        link: BaseException | None = exc
        while link is not None and len(chain) < 10:
            chain.append(link)
            link = link.__cause__ or link.__context__
        if any(isinstance(e, self.refused) for e in chain):
            return False
        return isinstance(exc, self.lost)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
