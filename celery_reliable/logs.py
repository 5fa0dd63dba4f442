"""Structured logs: one line per reliability decision, and a JSON formatter for them.

Every decision a task makes (``deduplicated``, ``deferred``, ``rate-limited``,
``circuit-open``, ``bulkhead-full``, ``lock-skipped``, ``lock-lost``, ``dead-lettered``,
``retried``, ``claimed``, ``completed``, ``circuit-changed``) is logged once by the
``celery_reliable`` logger. The text reads well in a plain log::

    task-deduplicated shop.charge[5c1f...] key=shop.charge||charge:42 original_task_id=0b7e...

and the same facts ride on the record as ``record.reliable``, a dict that any JSON
formatter rendering ``extra`` attributes shows as an object::

    {"decision": "deduplicated", "event": "task-deduplicated", "task": "shop.charge",
     "task_id": "5c1f...", "idempotency_key": "shop.charge||charge:42",
     "original_task_id": "0b7e..."}

Task arguments are never logged. :class:`JsonFormatter` renders every record as one JSON
object per line and masks passwords in URLs. Switch it on for a worker (and beat) with
``app.conf.reliable_log_json = True``: :func:`connect` (called by ``install(app)``) sets it
on the handlers Celery creates at start. With your own logging configuration, name it
there instead::

    "formatters": {"json": {"()": "celery_reliable.logs.JsonFormatter"}}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery, Task

logger = logging.getLogger("celery_reliable")

#: The record attribute that carries a decision's fields.
FIELD = "reliable"

#: Attributes every ``LogRecord`` has; anything else on a record came through ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "task_id", "task_name"}
)

#: Keys of ``extra`` values that hold task arguments (Celery's ``data`` of its task lines has
#: them): left out unless a :class:`JsonFormatter` is told to show them.
ARGUMENT_KEYS = frozenset({"args", "kwargs", "argsrepr", "kwargsrepr"})

#: The password of a URL's user information (``scheme://user:password@host``).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def decision_name(event: str) -> str:
    """The decision an event type stands for: ``task-deferred`` -> ``deferred``."""
    for prefix in ("task-", "reliable-"):
        if event.startswith(prefix):
            return event[len(prefix) :]
    return event


def idempotency_key_of(task: Task) -> str | None:
    """The running execution's idempotency key, or None when its task has none.

    Before the claim (a rate limit, breaker, bulkhead or lock decision) the key is built
    from the request's arguments, as the claim will; a key that cannot be built is None.
    """
    req = task.request
    key = getattr(req, "idempotency_key", None)
    if key:
        return str(key)
    spec = getattr(task, "_reliable_spec", None)
    if spec is None:
        return None
    try:
        return str(spec.scoped(task.name, tuple(req.args or ()), dict(req.kwargs or {})))
    except Exception:  # a log line never fails a task
        return None


def log_decision(
    task: Task,
    decision: str,
    fields: Mapping[str, Any],
    *,
    event: str | None = None,
    level: int = logging.INFO,
    note: str = "",
) -> None:
    """Log one decision of the running execution of ``task``, with its structured fields.

    Args:
        task: the task whose request is running.
        decision: what was decided (``"deduplicated"``, ``"retried"``, ...).
        fields: the decision's own values (reason, delay, lock, ...), never arguments.
        event: the Celery event sent for it, if any (it leads the text).
        level: the log level.
        note: a sentence appended to the text, for people reading plain logs.
    """
    if not logger.isEnabledFor(level):  # below the level: build nothing
        return
    req = task.request
    log_decision_for(task.name, req.id, decision, idempotency_key_of(task), fields, event=event, level=level, note=note)


def log_decision_for(
    task_name: str | None,
    task_id: str | None,
    decision: str,
    key: str | None,
    fields: Mapping[str, Any],
    *,
    event: str | None = None,
    level: int = logging.INFO,
    note: str = "",
) -> None:
    """Log one decision about a task that is not the running one (publishing, a raw message).

    Args:
        task_name: the task's name, if known.
        task_id: its id, if known.
        decision: what was decided.
        key: its idempotency key, if it has one.
        fields: the decision's own values.
        event: the Celery event sent for it, if any.
        level: the log level.
        note: a sentence appended to the text.
    """
    if not logger.isEnabledFor(level):
        return
    data: dict[str, Any] = {"decision": decision}
    if event is not None:
        data["event"] = event
    data.update(task=task_name, task_id=task_id)
    if key is not None:
        data["idempotency_key"] = key
    data.update(fields)
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    if key is not None and key not in (str(v) for v in fields.values()):
        text = f"{text} idempotency_key={key}" if text else f"idempotency_key={key}"
    if note:
        text = f"{text}: {note}" if text else note
    logger.log(level, "%s %s[%s] %s", event or decision, task_name, task_id, text, extra={FIELD: data})


def _plain(value: Any, hide: frozenset[str] = frozenset()) -> Any:
    """A JSON-ready copy of ``value`` with passwords in its strings masked and ``hide`` keys left out."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, hide) for k, v in value.items() if str(k) not in hide}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, hide) for v in value]
    return redact(str(value))


def _current_task() -> Any:
    from celery._state import get_current_task

    return get_current_task()


class JsonFormatter(logging.Formatter):
    """Render each record as one JSON object on one line.

    Keys: ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``, ``pid``,
    ``process`` (e.g. ``ForkPoolWorker-1``); inside a task, ``task_id``, ``task_name`` and
    its ``idempotency_key`` once known; a decision's fields under ``reliable``; any other
    ``extra`` attribute under its own name; ``exc_info`` and ``stack_info`` as text.
    Passwords in URLs are masked in every string, and task arguments carried in ``extra``
    (Celery's own task lines have them, under ``data``) are left out.

    Args:
        fmt, datefmt, style, validate: accepted for ``logging.config`` and ignored but for
            ``datefmt`` (a ``strftime`` format for ``ts`` instead of ISO 8601).
        static: key/values added to every line (service name, environment).
        show_arguments: keep the ``args``/``kwargs`` of ``extra`` values (they may hold
            personal data or secrets).
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        validate: bool = True,
        *,
        static: Mapping[str, Any] | None = None,
        show_arguments: bool = False,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate)
        self.static = dict(static or {})
        self.hide = frozenset() if show_arguments else ARGUMENT_KEYS

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time in UTC, ISO 8601 with milliseconds (or ``datefmt``)."""
        at = datetime.fromtimestamp(record.created, tz=timezone.utc)
        if datefmt:
            return at.strftime(datefmt)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, without a newline inside it."""
        out: dict[str, Any] = {
            **self.static,
            "ts": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
            "process": record.processName,
        }
        out.update(self._task_fields(record))
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = _plain(value, self.hide)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            out["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, default=str, ensure_ascii=False)

    @staticmethod
    def _task_fields(record: logging.LogRecord) -> dict[str, Any]:
        """The running task's id, name and key (a decision's own fields take precedence)."""
        found: dict[str, Any] = {}
        decision = getattr(record, FIELD, None)
        if isinstance(decision, Mapping) and decision.get("task_id"):
            found["task_id"] = decision["task_id"]
            found["task_name"] = decision.get("task")
            if decision.get("idempotency_key"):
                found["idempotency_key"] = _plain(decision["idempotency_key"])
            return found
        task = _current_task()
        req = getattr(task, "request", None)
        task_id = getattr(req, "id", None)
        if task_id is None:
            return found
        found["task_id"] = task_id
        found["task_name"] = getattr(task, "name", None)
        key = getattr(req, "idempotency_key", None)
        if key:
            found["idempotency_key"] = _plain(key)
        return found


def use_json(*loggers: logging.Logger, formatter: logging.Formatter | None = None) -> None:
    """Give every handler of ``loggers`` (default: the root logger) a :class:`JsonFormatter`."""
    chosen = formatter or JsonFormatter()
    for target in loggers or (logging.getLogger(),):
        for handler in target.handlers:
            handler.setFormatter(chosen)


def connect(app: Celery) -> None:
    """Render the worker's and beat's logs as JSON when ``app.conf.reliable_log_json`` is set.

    Connects to Celery's ``after_setup_logger`` and ``after_setup_task_logger`` signals,
    which a worker and beat send once they have created their handlers (prefork children
    inherit them). Idempotent per app.
    """
    from celery import signals

    def on_setup(logger: logging.Logger | None = None, **_: Any) -> None:
        from .config import get_config

        if logger is not None and get_config(app).log_json:
            use_json(logger)

    uid = f"celery_reliable.logs.{id(app)}"
    signals.after_setup_logger.connect(on_setup, weak=False, dispatch_uid=uid)
    signals.after_setup_task_logger.connect(on_setup, weak=False, dispatch_uid=f"{uid}.task")
