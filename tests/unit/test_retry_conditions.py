"""Exception conditions: composition, HTTP statuses, names, and the PERMANENT / TRANSIENT sets."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from typing import Any

import pytest
from celery.exceptions import NotRegistered

import celery_reliable.retries as retry_pkg
from celery_reliable.errors import (
    ConfigurationError,
    IdempotencyKeyMismatch,
    KeyInProgress,
    SerializationError,
)
from celery_reliable.retries import (
    NOTHING,
    PERMANENT,
    TRANSIENT,
    Condition,
    http_status,
    message_matches,
    named,
    on,
    status_of,
    when,
)
from celery_reliable.retries.conditions import as_condition


class StatusError(Exception):
    """An API client's error with a status as ``attr`` on itself, or on its ``response``."""

    def __init__(self, status: int, attr: str = "status_code", on_response: bool = False) -> None:
        super().__init__(f"HTTP {status}")
        if on_response:
            self.response = type("Response", (), {attr: status})()
        else:
            setattr(self, attr, status)


class HttpxLike(Exception):
    """Like httpx.RequestError: reading ``request`` raises when it was never set."""

    @property
    def request(self) -> Any:
        raise RuntimeError("The .request property has not been set.")

    @property
    def response(self) -> Any:
        raise RuntimeError("no response")


# -- composition ------------------------------------------------------------------------


def test_or_and_not_compose() -> None:
    conn_or_503 = on(ConnectionError) | http_status(503)
    assert conn_or_503(ConnectionResetError()) and conn_or_503(StatusError(503))
    assert not conn_or_503(StatusError(500)) and not conn_or_503(ValueError())

    os_but_not_missing = on(OSError) & ~on(FileNotFoundError)
    assert os_but_not_missing(PermissionError()) and not os_but_not_missing(FileNotFoundError())
    assert (~os_but_not_missing)(ValueError())

    both = on(ValueError) & message_matches("deadlock")
    assert both(ValueError("deadlock detected")) and not both(ValueError("nope")) and not both(KeyError("deadlock"))


def test_plain_classes_and_predicates_compose_on_either_side() -> None:
    left: Condition = ValueError | on(KeyError)  # type: ignore[assignment]  # Condition.__ror__ at run time
    right = on(KeyError) | (ValueError, TypeError)
    pred = when(lambda exc: "x" in str(exc)) & ValueError
    assert left(ValueError()) and left(KeyError()) and not left(TypeError())
    assert right(TypeError()) and right(KeyError())
    assert pred(ValueError("x")) and not pred(ValueError("y")) and not pred(KeyError("x"))
    assert isinstance(left, Condition) and "on(ValueError)" in repr(left)


def test_repr_describes_the_composition() -> None:
    cond = (on(KeyError) | http_status(503, 429)) & ~message_matches("fatal")
    assert repr(cond) == "<Condition ((on(KeyError) | http_status(429, 503)) & ~message_matches('fatal'))>"


def test_as_condition_accepts_the_shapes_and_names_the_parameter() -> None:
    assert as_condition((KeyError, ValueError), "retry_on")(ValueError())
    assert as_condition(KeyError, "retry_on")(KeyError())
    assert as_condition(lambda exc: True, "retry_on")(ValueError())
    assert as_condition((), "dont_retry_on") is NOTHING and not NOTHING(ValueError())
    for bad in ("ValueError", ValueError(), [ValueError], int, (ValueError, "x")):
        with pytest.raises(ConfigurationError, match=r"^retry_on: expected a Condition"):
            as_condition(bad, "retry_on")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: on(), "exception_types"),
        (lambda: on(int), "exception_types"),  # type: ignore[arg-type]
        (lambda: http_status(), "codes"),
        (lambda: http_status(99), "codes"),
        (lambda: http_status(True), "codes"),
        (lambda: message_matches("("), "pattern: not a regular expression"),
        (lambda: named(), "names"),
        (lambda: named(""), "names"),
    ],
)
def test_constructor_mistakes(make: Any, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        make()


# -- HTTP statuses ----------------------------------------------------------------------


@pytest.mark.parametrize("on_response", [False, True])
@pytest.mark.parametrize("attr", ["status_code", "status"])
def test_status_is_read_from_every_usual_place(attr: str, on_response: bool) -> None:
    exc = StatusError(429, attr, on_response)
    assert status_of(exc) == 429 and http_status(429)(exc) and not http_status(503)(exc)


def test_status_ignores_non_statuses_and_raising_properties() -> None:
    weird = ValueError("x")
    weird.status = "error"  # type: ignore[attr-defined]
    weird.status_code = True  # type: ignore[attr-defined]
    assert status_of(weird) is None
    assert status_of(HttpxLike()) is None and not PERMANENT(HttpxLike()) and not TRANSIENT(HttpxLike())


def test_real_requests_and_urllib_errors() -> None:
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code = 401
    exc = requests.HTTPError("401 Client Error", response=response)
    assert status_of(exc) == 401 and PERMANENT(exc) and not TRANSIENT(exc)
    assert TRANSIENT(requests.ConnectionError("refused")) and TRANSIENT(requests.Timeout())

    from email.message import Message
    from urllib.error import HTTPError

    assert status_of(HTTPError("http://x", 503, "busy", Message(), None)) == 503


def test_message_matches_searches_and_survives_a_broken_str() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    cond = message_matches(re.compile("DEADLOCK", re.I))
    assert cond(ValueError("deadlock detected")) and not cond(Broken())


def test_named_matches_the_mro_without_importing() -> None:
    OperationalError = type("OperationalError", (Exception,), {"__module__": "fakedb.errors"})
    Deadlock = type("Deadlock", (OperationalError,), {"__module__": "fakedb.errors"})
    assert named("OperationalError")(Deadlock()) and named("fakedb.errors.OperationalError")(Deadlock())
    assert not named("otherdb.OperationalError")(Deadlock())
    assert TRANSIENT(Deadlock())


# -- the defaults -----------------------------------------------------------------------


def _redis_error(name: str) -> Exception:
    import redis.exceptions

    return getattr(redis.exceptions, name)("x")


@pytest.mark.parametrize(
    "exc",
    [
        TypeError("bad call"),
        AttributeError("x"),
        NameError("x"),
        UnboundLocalError("x"),
        NotImplementedError(),
        AssertionError("invariant"),
        NotRegistered("tasks.missing"),
        ConfigurationError("ttl", "bad"),
        SerializationError("args[0]", object()),
        IdempotencyKeyMismatch("k", "a" * 64, "b" * 64),
        *(StatusError(code) for code in (400, 401, 403, 404, 405, 410, 422)),
        StatusError(401, "status", on_response=True),
        _redis_error("AuthenticationError"),
    ],
    ids=repr,
)
def test_permanent(exc: Exception) -> None:
    assert PERMANENT(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError(),
        ConnectionRefusedError(),
        BrokenPipeError(),
        TimeoutError(),
        asyncio.TimeoutError(),
        socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"),
        OSError(errno.ENETUNREACH, "network unreachable"),
        OSError(errno.EHOSTUNREACH, "no route to host"),
        *(StatusError(code) for code in (408, 425, 429, 500, 502, 503, 504)),
        _redis_error("ConnectionError"),
        _redis_error("TimeoutError"),
        _redis_error("BusyLoadingError"),
        _redis_error("ReadOnlyError"),
        _redis_error("TryAgainError"),
    ],
    ids=repr,
)
def test_transient(exc: Exception) -> None:
    assert TRANSIENT(exc) and not PERMANENT(exc)


def test_database_errors_are_transient_by_name() -> None:
    import psycopg
    import sqlalchemy.exc

    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.errors.SerializationFailure("conflict"))
    assert TRANSIENT(wrapped) and TRANSIENT(psycopg.errors.SerializationFailure("x"))
    assert not TRANSIENT(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))


@pytest.mark.parametrize(
    "exc",
    [ValueError("x"), KeyError("x"), FileNotFoundError(errno.ENOENT, "x"), StatusError(409), KeyInProgress("k", 1.0)],
    ids=repr,
)
def test_neither_permanent_nor_transient(exc: Exception) -> None:
    assert not PERMANENT(exc) and not TRANSIENT(exc)


def test_public_surface_is_sorted_and_importable() -> None:
    assert retry_pkg.__all__ == sorted(retry_pkg.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for name in retry_pkg.__all__:
        assert getattr(retry_pkg, name) is not None
