"""HTTP idempotency: request fingerprints, key checks, what is stored (no services needed)."""

from __future__ import annotations

import pytest

from celery_reliable.errors import (
    IdempotencyInProgress,
    IdempotencyKeyError,
    IdempotencyKeyMismatch,
    IdempotencyKeyReused,
    KeyInProgress,
)
from celery_reliable.http import StoredResponse, check_key, request_fingerprint, storable, value_fingerprint
from celery_reliable.http.execute import _encode
from celery_reliable.http.fingerprint import MAX_KEY_LENGTH


def test_same_request_same_fingerprint_whatever_header_order_and_case() -> None:
    a = request_fingerprint("post", "/payments", b'{"amount":1}', [("Content-Type", "application/json"), ("X-A", "1")])
    b = request_fingerprint(
        "POST", "/payments", b'{"amount":1}', [(b"x-a", b"1"), (b"content-type", b"application/json")]
    )
    assert a == b and len(a) == 64


@pytest.mark.parametrize(
    "other",
    [
        ("POST", "/payments", b'{"amount":2}', [], b""),  # body
        ("PATCH", "/payments", b'{"amount":1}', [], b""),  # method
        ("POST", "/refunds", b'{"amount":1}', [], b""),  # path
        ("POST", "/payments", b'{"amount":1}', [], b"x=1"),  # query
        ("POST", "/payments", b'{"amount":1}', [("content-type", "text/plain")], b""),  # selected header
    ],
)
def test_any_difference_changes_the_fingerprint(other: tuple) -> None:
    base = request_fingerprint("POST", "/payments", b'{"amount":1}', [], b"")
    method, path, body, headers, query = other
    assert request_fingerprint(method, path, body, headers, query) != base


def test_parts_are_framed_so_boundaries_matter() -> None:
    assert request_fingerprint("POST", "/ab", b"c") != request_fingerprint("POST", "/a", b"bc")


def test_value_fingerprint_is_canonical_and_typed() -> None:
    assert value_fingerprint({"a": 1, "b": [1, 2]}) == value_fingerprint({"b": [1, 2], "a": 1})
    assert value_fingerprint({"a": 1}) != value_fingerprint({"a": 2})
    assert value_fingerprint(b"x") != value_fingerprint("x") != value_fingerprint(["x"])

    class Model:  # a pydantic-like model is fingerprinted by its JSON dump
        def model_dump(self, mode: str) -> dict:
            assert mode == "json"
            return {"a": 1}

    assert value_fingerprint(Model()) == value_fingerprint({"a": 1})


@pytest.mark.parametrize("key", ["k", "3f1c-uuid-like-0001", "a" * MAX_KEY_LENGTH, "key with spaces_and:colons"])
def test_good_keys_pass(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", None, 12, "a" * (MAX_KEY_LENGTH + 1), "clé", "tab\tkey", "nl\n"])
def test_bad_keys_are_refused(key: object) -> None:
    with pytest.raises(IdempotencyKeyError):
        check_key(key)


@pytest.mark.parametrize(("status", "stored"), [(200, True), (201, True), (400, True), (404, True), (422, True)])
def test_answers_are_stored(status: int, stored: bool) -> None:
    assert storable(status) is stored


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
def test_server_errors_and_transient_refusals_are_not_stored(status: int) -> None:
    assert storable(status) is False


def test_stored_response_round_trips_bytes_and_headers() -> None:
    body = bytes(range(256))
    stored = StoredResponse.of_response(201, [(b"content-type", b"application/octet-stream")], body)
    assert stored.raw_body() == body
    assert stored.raw_headers() == [(b"content-type", b"application/octet-stream")]
    value = StoredResponse.of_value({"id": "p1", "amount": 5})
    assert value.value() == {"id": "p1", "amount": 5} and value.status_code is None


def test_encode_keeps_values_and_skips_server_error_responses() -> None:
    class Resp:
        def __init__(self, status: int) -> None:
            self.status_code = status
            self.body = b"{}"
            self.raw_headers = [(b"content-type", b"application/json")]

    assert _encode(Resp(503)) is None
    assert _encode(Resp(429)) is None
    assert _encode(Resp(201)).status_code == 201  # type: ignore[union-attr]
    assert _encode({"ok": True}).value() == {"ok": True}  # type: ignore[union-attr]


def test_errors_carry_their_status_and_fit_the_tree() -> None:
    reused = IdempotencyKeyReused("k", "/payments", "a" * 64, "b" * 64)
    busy = IdempotencyInProgress("k", "/payments", 2.5)
    assert reused.status_code == 422 and isinstance(reused, IdempotencyKeyMismatch)
    assert busy.status_code == 409 and isinstance(busy, KeyInProgress) and busy.retry_after == 2.5
    # args match the constructor, so the errors survive Celery's round trip
    assert type(reused)(*reused.args).args == reused.args
    assert type(busy)(*busy.args).args == busy.args
    assert "/payments" in str(reused) and "in progress" in str(busy)
