"""Listen mode: relay the moment a transaction that wrote to the outbox commits.

With ``reliable_outbox_listen = True``, :func:`~celery_reliable.outbox.enqueue` adds
``pg_notify('reliable_outbox', '')`` to its insert, and every worker runs an
:class:`OutboxListener` thread (started by the worker bootstep, in the worker's main
process). The thread holds one dedicated psycopg connection (SQLAlchemy has no API for
``LISTEN``), waits for notifications and runs a relay as soon as one arrives.

Notifications are coalesced, not counted: whatever arrives while a relay run is busy is
drained afterwards and answered by one more run, which picks up everything committed by
then. A missed notification costs nothing but latency: the thread also relays every
``reliable_outbox_poll_interval`` (retries that came due, rows written without notify),
and beat's relay keeps running. A lost connection is opened again with backoff, and a
relay run follows every (re)connection, for what was committed while nobody listened.
Several workers listening wake together; their relays share the rows through
``SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .model import CHANNEL
from .relay import run
from .settings import outbox_config

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


def libpq_dsn(database_url: str) -> str:
    """The libpq URI of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class OutboxListener:
    """A daemon thread that LISTENs on ``reliable_outbox`` and relays on every notification.

    Args:
        app: the Celery app (settings, producer pool, database).
        relay: what to run when woken (default: a relay run of ``app``); for tests.
        poll_interval: seconds between relay runs without notification
            (default ``reliable_outbox_poll_interval``).
    """

    def __init__(
        self,
        app: Celery,
        relay: Callable[[], Any] | None = None,
        poll_interval: float | None = None,
    ) -> None:
        cfg = outbox_config(app)
        if not cfg.database_url or not cfg.database_url.startswith("postgresql"):
            raise ValueError("outbox listen mode needs reliable_database_url to be a PostgreSQL URL")
        self.app = app
        self._dsn = libpq_dsn(cfg.database_url)
        self._relay = relay or (lambda: run(app))
        self._poll = cfg.poll_interval_ms / 1000.0 if poll_interval is None else poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Relay runs started so far, runs finished, and how many runs a notification caused.
        self.runs = 0
        self.finished = 0
        self.woken = 0
        #: Set once the connection LISTENs (for tests and start-up ordering).
        self.listening = threading.Event()

    def start(self) -> OutboxListener:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="celery-reliable-outbox-listener", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _main(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except Exception as exc:
                self.listening.clear()
                logger.warning("celery-reliable: outbox listener connection lost (%r); retry in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.listening.set()
            self._run_relay()  # what committed while nobody listened
            next_poll = time.monotonic() + self._poll
            while not self._stop.is_set():
                woke = False
                for _ in conn.notifies(timeout=min(0.5, max(0.0, next_poll - time.monotonic())), stop_after=1):
                    woke = True
                if not woke and time.monotonic() < next_poll:
                    continue
                for _ in conn.notifies(timeout=0):  # coalesce whatever else has arrived
                    pass
                self.woken += woke
                self._run_relay()
                next_poll = time.monotonic() + self._poll

    def _run_relay(self) -> None:
        self.runs += 1
        try:
            self._relay()
        except Exception:
            logger.exception("celery-reliable: outbox relay run failed")
        finally:
            self.finished += 1
