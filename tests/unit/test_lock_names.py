"""Lock names, lease lengths, Redis keys and advisory-lock ids (no services needed)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from celery_reliable.errors import ConfigurationError
from celery_reliable.locks import advisory_id
from celery_reliable.locks.names import MAX_NAME_BYTES, MAX_TTL_MS, check_name, optional_seconds, redis_key, ttl_ms
from tests.harness import ROOT

# -- check_name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "payment:order-123",
        "a",
        "ключ-замка",  # Cyrillic
        "锁:订单",  # CJK
        "🔒💳 order 42",  # emoji (4-byte UTF-8)
        "הזמנה-7",  # right-to-left (Hebrew)
        "طلب\u200f-9",  # right-to-left (Arabic) with an RLM mark
        "x" * MAX_NAME_BYTES,  # exactly at the limit
        "é" * (MAX_NAME_BYTES // 2),  # 2-byte characters, exactly at the limit
        " spaces and\ttabs\n",
    ],
)
def test_check_name_accepts_unicode(name: str) -> None:
    assert check_name(name) is name


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("\x00", "NUL"),
        ("x" * (MAX_NAME_BYTES + 1), "1025"),
        ("é" * (MAX_NAME_BYTES // 2 + 1), "1026"),  # 513 characters but 1026 bytes: the limit is in bytes
        ("🔒" * (MAX_NAME_BYTES // 4 + 1), "1028"),
        ("lone \ud800 surrogate", "surrogate"),
        ("\udfff", "surrogate"),
    ],
)
def test_check_name_rejects(name: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_name(name)
    assert err.value.name == "name"
    assert needle in str(err.value)


@pytest.mark.parametrize("name", [None, 42, 1.5, b"bytes-name", ["list"], ("t",), object()])
def test_check_name_rejects_non_str(name: object) -> None:
    with pytest.raises(ConfigurationError) as err:
        check_name(name)
    assert err.value.name == "name"
    assert "must be a str" in str(err.value)
    assert type(name).__name__ in str(err.value)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_name("")


# -- ttl_ms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1000),
        (30, 30_000),
        (0.3, 300),
        (0.001, 1),
        (0.0015, 2),  # rounded, not truncated
        (timedelta(seconds=2, milliseconds=500), 2500),
        (timedelta(milliseconds=1), 1),
        (86_400, MAX_TTL_MS),  # exactly one day
        (timedelta(days=1), MAX_TTL_MS),
    ],
)
def test_ttl_ms_normalises(value: object, expected: int) -> None:
    got = ttl_ms(value)
    assert got == expected
    assert type(got) is int


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (0, "positive"),
        (0.0, "positive"),
        (-1, "positive"),
        (-0.5, "positive"),
        (timedelta(0), "positive"),
        (timedelta(seconds=-3), "positive"),
        (math.nan, "positive"),
        (math.inf, "positive"),
        (-math.inf, "positive"),
        (0.0001, "at least one millisecond"),  # sub-millisecond rounds to 0 ms
        (timedelta(microseconds=400), "at least one millisecond"),
        (86_400.001, "at most one day"),
        (timedelta(days=1, milliseconds=1), "at most one day"),
        (10**9, "at most one day"),
        (True, "expected seconds"),
        (False, "expected seconds"),
        ("30", "expected seconds"),
        (None, "expected seconds"),
        (b"1", "expected seconds"),
    ],
)
def test_ttl_ms_rejects(value: object, needle: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        ttl_ms(value)
    assert err.value.name == "ttl"
    assert needle in str(err.value)


def test_ttl_ms_names_the_option_it_checks() -> None:
    with pytest.raises(ConfigurationError) as err:
        ttl_ms(-1, "lock_ttl")
    assert err.value.name == "lock_ttl"
    assert str(err.value).startswith("lock_ttl: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (2, 2.0), (0.25, 0.25), (timedelta(seconds=3), 3.0)],
)
def test_optional_seconds(value: object, expected: float | None) -> None:
    assert optional_seconds(value, "timeout") == expected


@pytest.mark.parametrize("value", [-0.1, -5, math.nan, math.inf, True, "1", [1]])
def test_optional_seconds_rejects(value: object) -> None:
    with pytest.raises(ConfigurationError) as err:
        optional_seconds(value, "timeout")
    assert err.value.name == "timeout"


# -- redis_key --------------------------------------------------------------------------


def test_redis_key_wraps_the_name_in_a_hash_tag() -> None:
    assert redis_key("reliable", "payment:order-123") == "reliable:lock:{payment:order-123}"
    assert redis_key("app", "🔒") == "app:lock:{🔒}"


@pytest.mark.parametrize("name", ["a{b", "a}b", "{tag}", "}{", "x{}y"])
def test_redis_key_hashes_names_with_braces(name: str) -> None:
    key = redis_key("reliable", name)
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    assert key == f"reliable:lock:{{#{digest}}}"
    # exactly one hash tag, so every companion key (":fence", ":wake") lands in the same slot
    assert key.count("{") == 1 and key.count("}") == 1
    assert name not in key


def test_redis_key_of_different_braced_names_differ() -> None:
    assert redis_key("r", "a{b") != redis_key("r", "a}b")
    assert redis_key("r", "{x}") != redis_key("r", "x")


# -- advisory_id ------------------------------------------------------------------------


def _documented_advisory_id(name: str) -> int:
    """First 8 bytes of SHA-256 of the UTF-8 name, big-endian signed 64-bit."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    value = int.from_bytes(digest[:8], "big")
    return value - (1 << 64) if value >= 1 << 63 else value


NAMES = ["payment:order-123", "🔒💳", "הזמנה-7", "a{b}", "x" * 1024]


@pytest.mark.parametrize("name", NAMES)
def test_advisory_id_follows_the_documented_formula(name: str) -> None:
    got = advisory_id(name)
    assert got == _documented_advisory_id(name)
    assert -(2**63) <= got < 2**63


def test_advisory_id_pinned_values() -> None:
    # sha256(b"payment:order-123") starts 0c e4 b5 51 ee 97 cd 9f; pinned so a change of formula shows up
    assert advisory_id("payment:order-123") == 0x0CE4B551EE97CD9F == 929066786645069215
    assert advisory_id("lock-3") == -558728429676447888  # top bit set: read as signed, not unsigned
    assert advisory_id("payment:order-123") != advisory_id("payment:order-124")


def test_advisory_id_covers_negative_ids() -> None:
    ids = [advisory_id(f"lock-{i}") for i in range(64)]
    assert any(i < 0 for i in ids) and any(i > 0 for i in ids)
    assert len(set(ids)) == 64


def test_advisory_id_validates_the_name() -> None:
    with pytest.raises(ConfigurationError):
        advisory_id("")
    with pytest.raises(ConfigurationError):
        advisory_id("bad\ud800")


def test_advisory_id_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import sys, json; from celery_reliable.locks import advisory_id; "
        "names = json.loads(sys.argv[1]); "
        "print(json.dumps([advisory_id(n) for n in names] + [hash('seed-probe')]))"
    )
    results = []
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(NAMES)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        results.append(json.loads(out.stdout))
    ids_a, ids_b = results[0][:-1], results[1][:-1]
    # the seeds really differ (Python's own hash() disagrees between the two processes)
    assert results[0][-1] != results[1][-1]
    assert ids_a == ids_b == [advisory_id(n) for n in NAMES]
