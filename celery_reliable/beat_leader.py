"""A highly available beat: many ``celery beat`` processes, one leader sends.

Use it with ``celery -A proj beat -S celery_reliable.beat_leader:LeaderScheduler``
(:func:`celery_reliable.install` makes it the default when the app names no scheduler).

Every beat ticks; only the holder of a lease in Redis (``<prefix>:{beat}:leader``, value
``host:pid:nonce``) sends. The leader extends its lease every third of
``reliable_beat_lease``; a standby tries to take it about once a second, so it takes over
at most one lease (plus one try) after the leader dies. A clean shutdown gives the lease
back at once.

Each send is claimed first with one script that checks that the caller still holds the
lease *and* that the entry's tick is newer than the last tick claimed for that entry
(the hash ``<prefix>:{beat}:last-run``). So a leader paused past its lease (SIGSTOP, a long
GC, a VM migration) sends nothing when it wakes, and a new leader never sends again a
tick the old one sent: each tick of each entry is sent at most once, whoever leads.

A tick is the instant the entry fell due, not the instant beat noticed: ``last + every``
on an interval's grid, the crontab instant after the last run. When beat was away for
several ticks it sends one, for the newest instant already due, like Celery's own beat.
A beat killed between the claim and the publish loses that one tick (at most once per tick).
The tick travels with the message in the ``reliable_beat_tick`` header (milliseconds since
the epoch), with the entry's name in ``reliable_beat_entry``: a stable key for consumers.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab
from celery.schedules import schedule as interval
from celery.utils.time import remaining
from redis.exceptions import RedisError

from .clients import redis_and_scripts
from .config import get_config
from .scripts import script_for

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: Shortest lease accepted, in milliseconds.
MIN_LEASE_MS = 1000
#: Longest wait of a standby between two tries to take the lease (seconds).
STANDBY_POLL = 1.0
#: Most schedule instants walked to find the newest one already due (crontab catch-up).
MAX_CATCH_UP_STEPS = 1000
#: Message headers that carry the tick and the entry.
TICK_HEADER = "reliable_beat_tick"
ENTRY_HEADER = "reliable_beat_entry"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch of an aware ``when`` (a naive one is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int, tz: Any = timezone.utc) -> datetime:
    """The aware datetime ``ms`` milliseconds after the epoch, in ``tz``."""
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def next_instant(sched: Any, last: datetime) -> datetime | None:
    """The first instant ``sched`` falls due after ``last``, or None when it cannot say.

    Exact for intervals (``last + every``, rounded when ``relative``) and crontabs; a
    solar or custom schedule answers None (its tick is then the instant it is claimed).
    """
    if isinstance(sched, crontab):
        start, delta, _ = sched.remaining_delta(last)
        found: datetime = start + delta
        return found
    if isinstance(sched, interval):
        start = sched.maybe_make_aware(last)
        return start + remaining(start, sched.run_every, start, sched.relative)
    return None


def tick_for(sched: Any, last: datetime, now: datetime) -> datetime:
    """The tick to send now: the newest instant of ``sched`` after ``last`` and not after ``now``.

    Falls back to ``now`` when the schedule cannot name its instants, or when the first
    instant after ``last`` is still ahead (the caller decided it is due regardless). The
    result is cut to whole milliseconds, the precision the tick is stored at.
    """
    found = next_instant(sched, last)
    if found is None or found > now:
        return from_ms(to_ms(now), now.tzinfo)
    every = getattr(sched, "run_every", None)
    if isinstance(sched, interval) and not sched.relative and every is not None and every > timedelta(0):
        found += ((now - found) // every) * every
    else:
        for _ in range(MAX_CATCH_UP_STEPS):
            after = next_instant(sched, found)
            if after is None or after > now or after <= found:
                break
            found = after
    return from_ms(to_ms(found), found.tzinfo)


def owner_token() -> str:
    """A token naming this process: ``host:pid:nonce`` (the nonce tells two runs apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_ms(app: Celery) -> int:
    """The app's beat lease in milliseconds (``reliable_beat_lease``, at least one second)."""
    return max(get_config(app).beat_lease_ms, MIN_LEASE_MS)


class LeaderScheduler(Scheduler):
    """A Celery beat scheduler that sends only while it holds the leader lease.

    Schedule state (the last tick claimed per entry) lives in Redis, so it needs no
    schedule file (``-s`` is ignored) and a standby starts where the leader stopped.

    Attributes:
        token: this scheduler's owner token (``host:pid:nonce``).
        is_leader: whether the last lease check (or claim) found the lease ours.
        claims: counts of claim outcomes: ``sent``, ``already_sent``, ``not_leader``, ``error``.
    """

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        cfg = get_config(app)
        self.redis_url = cfg.redis_url
        self.lease_key = f"{cfg.key_prefix}:{{beat}}:leader"
        self.ticks_key = f"{cfg.key_prefix}:{{beat}}:last-run"
        self.lease_ms = lease_ms(app)
        self.token = owner_token()
        self.is_leader = False
        self.claims = {"sent": 0, "already_sent": 0, "not_leader": 0, "error": 0}
        self._next_check = 0.0
        self._holder: str | None = None
        self._claimed: dict[str, int] = {}
        super().__init__(app, *args, **kwargs)

    @property
    def renew_every(self) -> float:
        """Seconds between two extensions of the lease by the leader (a third of it)."""
        return self.lease_ms / 3000.0

    @property
    def standby_poll(self) -> float:
        """Seconds between two tries of a standby to take the lease."""
        return min(STANDBY_POLL, self.renew_every)

    def _redis(self) -> Any:
        return redis_and_scripts(self.redis_url)[0]

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Check the lease when due, then run Celery's tick only while leading.

        Returns:
            seconds to sleep: never past the next lease check.
        """
        if time.monotonic() >= self._next_check:
            self.check_lease()
        if not self.is_leader:
            return max(self._next_check - time.monotonic(), 0.0)
        delay = float(super().tick(*args, **kwargs))
        return max(min(delay, self._next_check - time.monotonic()), 0.0)

    def check_lease(self) -> bool:
        """Take the lease when free, extend it when ours (one script); return whether we lead."""
        started = time.monotonic()
        try:
            code, ttl, holder = script_for(self._redis(), "beat_lease")(
                keys=[self.lease_key], args=[self.token, self.lease_ms]
            )
            if code != 0 and (code == 1 or not self.is_leader):
                self._take_over()
        except RedisError as exc:
            self._step_down(None, f"cannot reach Redis ({exc})")
            self._next_check = started + self.standby_poll
            return False
        if code == 0:
            self._step_down(_text(holder), f"{_text(holder)} is the leader")
            self._next_check = started + min(self.standby_poll, max(int(ttl), 50) / 1000.0)
            return False
        self._next_check = started + self.renew_every
        return True

    def _step_down(self, holder: str | None, why: str) -> None:
        if self.is_leader:
            logger.warning("beat: %s lost the leader lease: %s; standing by", self.token, why)
        elif holder != self._holder:
            logger.info("beat: %s standing by: %s", self.token, why)
        self.is_leader = False
        self._holder = holder
        self._claimed.clear()

    def _take_over(self) -> None:
        """Become the leader: adopt the last ticks claimed, seed the entries never sent."""
        client = self._redis()
        stored = {k.decode(): int(v) for k, v in client.hgetall(self.ticks_key).items()}
        tz = self.app.timezone
        seeds: dict[str, int] = {}
        for name, entry in list(self.schedule.items()):
            if name in stored:
                self.schedule[name] = self._entry_at(entry, from_ms(stored[name], tz))
            else:
                seeds[name] = to_ms(entry.last_run_at)
        if seeds:
            pipe = client.pipeline(transaction=False)
            for name, ms in seeds.items():
                pipe.hsetnx(self.ticks_key, name, ms)
            pipe.execute()
        self.is_leader = True
        self._holder = self.token
        logger.info("beat: %s is the leader (lease %.1fs)", self.token, self.lease_ms / 1000)
        self._heap = None  # rebuilt from the adopted ticks on Celery's next tick

    def _entry_at(self, entry: ScheduleEntry, last_run_at: datetime, count: bool = False) -> ScheduleEntry:
        fields = dict(entry)
        fields.update(last_run_at=last_run_at, total_run_count=entry.total_run_count + int(count))
        return self.Entry(**fields)

    def is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        """Celery's answer, with the wait after a due entry counted from its tick (no drift)."""
        due, wait = entry.is_due()
        if due:
            now = entry.default_now()
            following = next_instant(entry.schedule, tick_for(entry.schedule, entry.last_run_at, now))
            if following is not None:
                wait = max((following - now).total_seconds(), 0.001)
        return due, wait

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Claim the entry's tick in Redis; only a claimed tick is sent by :meth:`apply_async`."""
        self._claimed.pop(entry.name, None)
        now = entry.default_now()
        try:
            tick = tick_for(entry.schedule, entry.last_run_at, now)
        except Exception:  # a schedule that cannot say must not stop beat; is_due just could
            logger.exception("beat: cannot find the tick of %s; using the time of the claim", entry.name)
            tick = from_ms(to_ms(now), now.tzinfo)
        try:
            code, last = script_for(self._redis(), "beat_claim")(
                keys=[self.lease_key, self.ticks_key], args=[self.token, entry.name, to_ms(tick)]
            )
        except RedisError as exc:
            self.claims["error"] += 1
            logger.warning("beat: cannot claim %s at %s (%s); not sending it", entry.name, tick.isoformat(), exc)
            return entry
        if code == -1:
            self.claims["not_leader"] += 1
            self._step_down(_text(last), f"the lease is {_text(last) or 'expired'} at the claim of {entry.name}")
            self._next_check = 0.0
            return entry
        if code == 0:
            self.claims["already_sent"] += 1
            logger.info("beat: %s at %s was already sent; skipping it", entry.name, tick.isoformat())
            new_entry = self._entry_at(entry, from_ms(int(last), self.app.timezone))
        else:
            self._claimed[entry.name] = to_ms(tick)
            new_entry = self._entry_at(entry, tick, count=True)
        self.schedule[entry.name] = new_entry
        return new_entry

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Send ``entry`` if its tick was claimed; say nothing otherwise."""
        if entry.name in self._claimed:
            super().apply_entry(entry, producer=producer)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send ``entry`` with its tick in the headers, only if its tick is claimed.

        Returns:
            the ``AsyncResult``, or None when the tick was not ours to send.
        """
        if advance:
            self.reserve(entry)
        tick_ms = self._claimed.pop(entry.name, None)
        if tick_ms is None:
            return None
        self.claims["sent"] += 1
        sent = copy.copy(entry)
        options = dict(entry.options or {})
        options["headers"] = {**(options.get("headers") or {}), TICK_HEADER: tick_ms, ENTRY_HEADER: entry.name}
        sent.options = options
        return super().apply_async(sent, producer=producer, advance=False, **kwargs)

    def close(self) -> None:
        """Give the lease back (only if still ours), then close Celery's resources."""
        try:
            if self.is_leader:
                script_for(self._redis(), "lease_release")(keys=[self.lease_key], args=[self.token])
                logger.info("beat: released the leader lease")
        except RedisError as exc:
            logger.warning("beat: could not release the leader lease (%s); it expires by itself", exc)
        finally:
            self.is_leader = False
            super().close()

    @property
    def info(self) -> str:
        """The lines ``celery beat`` prints under its banner."""
        return f"    . leader lease -> {self.lease_key} ({self.lease_ms / 1000:g}s)"


def _text(value: Any) -> str | None:
    """A reply as text (None stays None)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
