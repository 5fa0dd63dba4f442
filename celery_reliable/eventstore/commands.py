"""Run a command in its own transaction, again on :class:`ConcurrencyConflict`.

Optimistic concurrency: a command loads the aggregate, decides, and appends expecting the
version it loaded. When another writer got there first, the whole command (load,
decide, append) runs again in a fresh transaction after a short, jittered, exponential
backoff: by default up to 3 more times, with a 100 ms base delay (then 200 ms, 400 ms,
each with full jitter), capped at 2 s.

A retry does not go back into the same race: it first locks the row of the stream that
conflicted (``SELECT ... FOR UPDATE``), so nobody can append to that stream between its
load and its append. Optimistic on the first attempt, pessimistic once it lost: on a
stream everybody writes to at once, the losers still finish within their retries instead
of losing again to whoever is fastest::

    def withdraw(session):
        account = load(session, Account, "account-42")
        account.withdraw(30)
        save(session, account)

    run_command(engine, withdraw)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from .errors import ConcurrencyConflict
from .store import lock_stream

T = TypeVar("T")

#: Retries after the first attempt (3 retries, as the optimistic-locking rule says).
DEFAULT_RETRIES = 3
#: Backoff before the first retry, in seconds (doubles per retry).
DEFAULT_BASE_DELAY = 0.1
#: Longest backoff, in seconds.
DEFAULT_MAX_DELAY = 2.0
#: SQLSTATEs that mean "another transaction got there first" under REPEATABLE READ or
#: SERIALIZABLE (where a conflicting append fails this way instead): retried like a conflict.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` means the command lost a race and may succeed when run again."""
    if isinstance(exc, ConcurrencyConflict):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def backoff_delay(retry: int, base_delay: float, max_delay: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``retry`` (1-based): full jitter over ``base * 2**(retry-1)``."""
    return rng() * min(max_delay, base_delay * 2 ** (retry - 1))


def run_command(
    bind: Engine | sessionmaker[Session],
    command: Callable[[Session], T],
    *,
    retries: int = DEFAULT_RETRIES,
    base_delay: float = DEFAULT_BASE_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``command(session)`` in a transaction; on a conflict roll back, back off and call it again.

    A conflict is :class:`ConcurrencyConflict`, or a serialization failure or deadlock
    reported by the database (SQLSTATE 40001, 40P01).

    The command must do all its reading inside the session it is given (load the
    aggregate there), so each attempt decides on fresh state.

    Args:
        bind: an Engine or a ``sessionmaker`` the sessions come from.
        command: the command; its return value is returned after the commit.
        retries: how many times to run it again after a conflict (0: never).
        base_delay: backoff before the first retry (seconds; doubles per retry, full jitter).
        max_delay: the longest backoff (seconds).
        sleep: how to wait (tests pass a fake).

    Returns:
        What the command returned, once its transaction committed.

    Raises:
        ConcurrencyConflict: the last attempt conflicted too (or the database's
            serialization failure, under REPEATABLE READ or SERIALIZABLE).
        TypeError, ValueError: bad arguments.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    for name, value in (("base_delay", base_delay), ("max_delay", max_delay)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not callable(command):
        raise TypeError(f"command must be callable, got {command!r}")
    if isinstance(bind, Engine):
        factory: sessionmaker[Session] = sessionmaker(bind)
    elif isinstance(bind, sessionmaker):
        factory = bind
    else:
        raise TypeError(f"run_command() needs an Engine or a sessionmaker, got {type(bind).__name__}")
    attempt = 0
    contended: set[str] = set()
    while True:
        try:
            with factory() as session, session.begin():
                for stream_id in sorted(contended):  # one order: retriers do not deadlock each other
                    lock_stream(session, stream_id)
                return command(session)
        except (ConcurrencyConflict, DBAPIError) as exc:
            attempt += 1
            if attempt > retries or not is_conflict(exc):
                raise
            if isinstance(exc, ConcurrencyConflict):
                contended.add(exc.stream_id)
            sleep(backoff_delay(attempt, float(base_delay), float(max_delay)))
