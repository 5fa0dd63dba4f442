"""PostgresAdvisoryLock: a PostgreSQL advisory lock with a fencing token and loss detection.

The lock's id is :func:`~celery_reliable.locks.names.advisory_id` of its name (in
``pg_locks``: ``classid`` = its high 32 bits, ``objid`` = its low 32 bits, ``objsubid`` = 1).

``scope="session"`` holds the lock until release or the end of the database session.
Given an Engine, the lock checks out a connection of its own (AUTOCOMMIT: it idles, never
"idle in transaction", while held) and returns it on release; the process's heartbeat
asks that session every ``check_interval`` whether it still holds the lock (the two
threads share the connection under a ``threading.Lock``), and sets :attr:`lost` when the
session was terminated or disconnected: others can take the lock then. Given a
Connection, no background thread touches it: :meth:`check` asks the server instead.
``scope="transaction"`` needs a Connection inside a transaction, whose end releases it.

A blocking acquire waits in the server (``pg_advisory_lock`` under ``lock_timeout``, put
back afterwards), so it wakes as soon as the holder releases; in a caller's transaction
the wait runs in a savepoint, so a timeout does not abort it. Give the engine TCP
keepalives (``connect_args``) so a dead network cannot stall the heartbeat thread.

The fencing token is drawn in the same session right after the lock is granted, from
one sequence for every name (``reliable_fence_seq``), which is moved up to the server's
clock in microseconds whenever it has fallen more than a second behind. Tokens therefore
strictly increase per name and never go backwards, even across restarts (sequences log
ahead and ignore rollbacks) or if the database clock steps back (the sequence is only
ever raised), and they are of the same kind as RedisLock's tokens (server microseconds,
trailing the clock by at most a second), so a resource fenced under one lock backend
accepts the other's tokens, after at most a second, when a task moves between them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from datetime import timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError

from ..errors import ConfigurationError, LockError, LockLost, LockNotAcquired
from ..heartbeat import Lease, heartbeat
from .names import advisory_id, optional_seconds, ttl_ms

logger = logging.getLogger("celery_reliable.locks")

SCOPES = ("session", "transaction")
#: The sequence fencing tokens come from (created by ``celery reliable migrate``).
FENCE_SEQUENCE = "reliable_fence_seq"
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out
_UNDEFINED_TABLE = "42P01"  # the sequence does not exist
_TRY = {"session": "pg_try_advisory_lock", "transaction": "pg_try_advisory_xact_lock"}
_WAIT = {"session": "pg_advisory_lock", "transaction": "pg_advisory_xact_lock"}
_MATCH = (
    "locktype = 'advisory' AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1 AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_HELD_HERE = text(f"SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND {_MATCH}")
_HELD_ANYWHERE = text(f"SELECT count(*) FROM pg_locks WHERE {_MATCH}")
_TIMEOUT = text("SELECT current_setting('lock_timeout')")
_SET_TIMEOUT = text("SELECT set_config('lock_timeout', :value, false)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")


#: The next fencing token: the shared sequence, moved up to the server clock (in
#: microseconds) when it has fallen more than a second behind it. ``setval`` forces a WAL
#: flush, so it runs at most about once a second; ``nextval`` alone is durable (it logs
#: ahead) and cheap.
_TOKEN_SQL = (
    "(SELECT CASE WHEN t.now_us > t.n + 1000000 THEN setval(CAST(:seq AS regclass), t.now_us) ELSE t.n END "
    "FROM (SELECT nextval(CAST(:seq AS regclass)) AS n, "
    "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000000) AS bigint) AS now_us) AS t)"
)


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)  # psycopg 3 or 2


def _gone(exc: Exception) -> bool:
    """Whether ``exc`` says the session is unusable (disconnected, or invalidated by SQLAlchemy)."""
    return (isinstance(exc, DBAPIError) and exc.connection_invalidated) or (
        isinstance(exc, InvalidRequestError) and not isinstance(exc, DBAPIError)
    )


class PostgresAdvisoryLock:
    """A PostgreSQL advisory lock, held by a database session or transaction.

    Args:
        engine_or_connection: a SQLAlchemy 2 Engine (the lock uses a connection of its
            own) or Connection (used as is; two locks on one Connection do not exclude
            each other: advisory locks are reentrant within a session).
        name: the lock's name (any unicode up to 1024 UTF-8 bytes).
        scope: ``"session"`` or ``"transaction"`` (see the module docstring).
        blocking: whether ``with`` and ``acquire()`` wait by default.
        timeout: the longest wait of a blocking acquire (``None`` waits for ever).
        check_interval: seconds between the heartbeat's checks that the session still
            holds the lock (Engine, session scope; ``None``: no heartbeat, :meth:`check`
            asks the server).
        fence_sequence: the sequence fencing tokens come from; ``None`` for no token.

    Attributes:
        key: the advisory-lock id. token: the fencing token of the current hold.
        backend_pid: the holding session's pid. lost: set once the lock is known lost.

    Raises:
        ConfigurationError: for a bad name, scope, timeout, check_interval or engine.
    """

    def __init__(
        self,
        engine_or_connection: Engine | Connection,
        name: str,
        scope: str = "session",
        *,
        blocking: bool = True,
        timeout: float | timedelta | None = None,
        check_interval: float | timedelta | None = 5.0,
        fence_sequence: str | None = FENCE_SEQUENCE,
    ) -> None:
        bind = engine_or_connection
        if not isinstance(bind, (Engine, Connection)):
            raise ConfigurationError("engine_or_connection", f"expected an Engine or a Connection, got {bind!r}")
        self._given = bind if isinstance(bind, Connection) else None
        self.engine = bind.engine
        if self.engine.dialect.name != "postgresql":
            raise ConfigurationError("engine_or_connection", f"advisory locks need PostgreSQL, not {bind.dialect.name}")
        self.key = advisory_id(name)
        self.name = name
        if scope not in SCOPES:
            raise ConfigurationError("scope", f"expected 'session' or 'transaction', got {scope!r}")
        if scope == "transaction" and self._given is None:
            raise ConfigurationError("scope", "'transaction' needs a Connection inside a transaction, not an Engine")
        self.scope = scope
        self.blocking = bool(blocking)
        self.timeout = optional_seconds(timeout, "timeout")
        self._interval_ms = None if check_interval is None else ttl_ms(check_interval, "check_interval")
        if fence_sequence is not None and (not isinstance(fence_sequence, str) or not fence_sequence):
            raise ConfigurationError("fence_sequence", f"expected a sequence name or None, got {fence_sequence!r}")
        self.fence_sequence = fence_sequence
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        self._ids = {"key": self.key, "hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF}
        self.token: int | None = None
        self.backend_pid: int | None = None
        self.lost = threading.Event()
        self._conn: Connection | None = None
        self._txn: Any = None  # transaction scope: the transaction holding the lock
        self._io = threading.Lock()  # one user of the lock's own connection at a time
        self._lease: Lease | None = None

    def _autocommit(self, conn: Connection) -> bool:
        return self._given is None or bool(getattr(conn.connection.driver_connection, "autocommit", False))

    def _outer(self, conn: Connection) -> Any:
        """A caller's Connection outside a transaction: run the step in one, committed at once."""
        if self._given is None or conn.in_transaction() or self._autocommit(conn):
            return contextlib.nullcontext()
        return conn.begin()

    def _guarded(self, conn: Connection) -> Any:
        """A savepoint around a statement that may fail, so it cannot abort the caller's transaction."""
        return contextlib.nullcontext() if self._autocommit(conn) else conn.begin_nested()

    def _checkin(self, conn: Connection, broken: bool = False) -> None:
        if self._given is not None:
            return
        if broken:  # closing the session frees whatever it might still hold
            with contextlib.suppress(Exception):
                conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()

    def acquire(self, blocking: bool | None = None, timeout: float | timedelta | None = None) -> bool:
        """Acquire the lock, and draw its fencing token.

        Args:
            blocking: wait for it (default: the constructor's ``blocking``).
            timeout: longest wait in seconds (default: the constructor's ``timeout``).

        Returns:
            True when acquired; False when not blocking, or the timeout ran out.

        Raises:
            LockError: already held by this object. ConfigurationError: transaction scope
                outside a transaction, or no fence sequence.
        """
        if self._holding() is not None:
            raise LockError(self.name, "already held by this PostgresAdvisoryLock object (it is not reentrant)")
        block = self.blocking if blocking is None else bool(blocking)
        wait = self.timeout if timeout is None else optional_seconds(timeout, "timeout")
        server_wait = None if not block or wait == 0 else (-1.0 if wait is None else wait)
        if self._given is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        else:
            conn = self._given
            if self.scope == "transaction" and (not conn.in_transaction() or self._autocommit(conn)):
                raise ConfigurationError("scope", "'transaction' needs the Connection inside a transaction (begin())")
        try:
            with self._io, self._outer(conn):
                granted = self._lock(conn, server_wait)
        except BaseException:
            self._checkin(conn, broken=True)
            raise
        if not granted:
            self._checkin(conn)
            return False
        self._conn, self._txn = conn, (conn.get_transaction() if self.scope == "transaction" else None)
        self.lost.clear()
        if self._given is None and self._interval_ms is not None:
            lease = Lease(f"advisory lock {self.name!r}", self._interval_ms * 3, self._renew, lost=self.lost)
            self._lease = heartbeat().add(lease)
        return True

    def _lock(self, conn: Connection, wait: float | None) -> bool:
        """Take the lock and its token; if busy, wait (``wait``: None: no, -1: for ever); False if not granted."""
        token_sql = _TOKEN_SQL if self.fence_sequence else "0"
        params = {**self._ids, "seq": self.fence_sequence}
        granted = False
        try:
            with self._guarded(conn):  # one round trip: the token is drawn only if the lock was granted
                sql = f"SELECT pg_backend_pid(), CASE WHEN {_TRY[self.scope]}(:key) THEN {token_sql} ELSE -1 END"
                pid, token = conn.execute(text(sql), params).one()
            if token < 0:  # busy
                granted = wait is not None and self._wait(conn, _WAIT[self.scope], wait)
                if not granted:
                    return False
                with self._guarded(conn):
                    pid, token = conn.execute(text(f"SELECT pg_backend_pid(), {token_sql}"), params).one()
        except DBAPIError as exc:
            missing = _sqlstate(exc) == _UNDEFINED_TABLE  # (granted: the token is drawn after the lock)
            if self._given is not None and self.scope == "session" and (granted or missing) and not _gone(exc):
                with contextlib.suppress(Exception):  # a session lock outlives the failed statement
                    conn.execute(_UNLOCK, self._ids)
            if missing:
                raise ConfigurationError(
                    "fence_sequence",
                    f"sequence {self.fence_sequence!r} does not exist: run `celery reliable migrate` "
                    "(or pass fence_sequence=None for a lock without fencing tokens)",
                ) from exc
            raise
        self.backend_pid, self.token = int(pid), (int(token) if self.fence_sequence else None)
        return True

    def _wait(self, conn: Connection, fn: str, wait: float) -> bool:
        """Wait in the server under ``lock_timeout``; False when it ran out (SQLSTATE 55P03)."""
        previous = conn.execute(_TIMEOUT).scalar_one()
        conn.execute(_SET_TIMEOUT, {"value": "0" if wait < 0 else str(max(1, math.ceil(wait * 1000)))})
        try:
            with self._guarded(conn):
                conn.execute(text(f"SELECT {fn}(:key)"), self._ids)
        except DBAPIError as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                raise
            return False
        finally:
            if conn.closed is False and not conn.invalidated:
                conn.execute(_SET_TIMEOUT, {"value": previous})
        return True

    def _held_by_session(self, conn: Connection) -> bool:
        try:
            with self._outer(conn):
                return bool(conn.execute(_HELD_HERE, self._ids).scalar())
        except Exception as exc:
            if not _gone(exc):
                raise
            return False

    def _renew(self) -> bool:
        """The heartbeat's check: does the lock's own session still hold the lock?

        Never waits for the connection: the heartbeat thread serves every lease of the
        process, and the holder may be releasing, or waiting to acquire again.
        """
        if not self._io.acquire(blocking=False):
            return True  # busy: look again next round
        try:
            conn = self._conn
            return conn is None or self._held_by_session(conn)
        finally:
            self._io.release()

    def _holding(self) -> Connection | None:
        """The connection holding the lock; in transaction scope, forget a lock whose transaction ended."""
        conn, txn = self._conn, self._txn
        if txn is not None and (not txn.is_active or conn is None or conn.get_transaction() is not txn):
            self._conn = self._txn = self.token = None
        return self._conn

    def held(self) -> bool:
        """Whether this object believes it holds the lock (not lost, not released)."""
        return self._holding() is not None and not self.lost.is_set()

    def check(self) -> None:
        """Raise :class:`LockLost` if the lock was lost while held.

        With the heartbeat running this reads the flag it sets; otherwise (a caller's
        Connection, or ``check_interval=None``) it asks the server, one round trip.

        Raises:
            LockError: not held; LockLost: the holding session ended.
        """
        conn = self._holding()
        if conn is None:
            raise LockError(self.name, "not held")
        if self._lease is None and not self.lost.is_set():
            with self._io:
                if not self._held_by_session(conn):
                    self.lost.set()
        if self.lost.is_set():
            raise LockLost(self.name, "the database session holding the lock ended (terminated or disconnected)")

    def locked(self) -> bool:
        """Whether any session holds the lock now (one query)."""
        if self._given is not None:
            with self._outer(self._given):
                return bool(self._given.execute(_HELD_ANYWHERE, self._ids).scalar())
        with self.engine.connect() as conn:
            return bool(conn.execute(_HELD_ANYWHERE, self._ids).scalar())

    def release(self) -> bool:
        """Release the lock (session scope) and return the lock's own connection.

        For ``scope="transaction"`` this is a no-op on the server: the lock stays held
        until the caller's transaction ends; only this object forgets it.

        Returns:
            True if released; False if the session had lost it (:attr:`lost` is then set).

        Raises:
            LockError: not held by this object.
        """
        conn = self._conn
        if conn is None:
            raise LockError(self.name, "release of a lock this object does not hold")
        if self.scope == "transaction":  # the end of the transaction releases it
            self._conn = self._txn = self.token = None
            return not self.lost.is_set()
        if self._lease is not None:
            heartbeat().remove(self._lease)
            self._lease = None
        unlocked = False
        with self._io:
            try:
                with self._outer(conn):
                    unlocked = bool(conn.execute(_UNLOCK, self._ids).scalar())
            except Exception as exc:
                if self._given is not None and not _gone(exc):
                    raise  # e.g. the caller's transaction is aborted: roll it back, then release() again
                if not _gone(exc):
                    logger.warning("could not unlock advisory lock %r (closing its session): %r", self.name, exc)
            self._conn = self.token = None
            self._checkin(conn, broken=not unlocked)
        if not unlocked:
            self.lost.set()
        return unlocked and not self.lost.is_set()

    def __enter__(self) -> PostgresAdvisoryLock:
        if not self.acquire():
            raise LockNotAcquired(self.name, "held by another database session")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            released = self.release()
        except Exception as error:
            if exc_type is None:
                raise
            logger.warning("could not release advisory lock %r after an error: %r", self.name, error)
            return
        if not released and exc_type is None:
            raise LockLost(self.name, "the database session lost the lock before the block ended")

    def __repr__(self) -> str:
        state = f"token={self.token} pid={self.backend_pid}" if self._conn is not None else "not held"
        return f"<PostgresAdvisoryLock {self.name!r} {self.scope} {state}>"
