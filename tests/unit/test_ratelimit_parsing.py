"""Rate limits without Redis: reading limits, their errors, tiers, decisions and headers."""

from __future__ import annotations

import pickle

import pytest
import redis

from celery_reliable import ratelimit
from celery_reliable.errors import BadLimit, ConfigurationError
from celery_reliable.ratelimit import (
    Decision,
    GCRALimiter,
    Limit,
    SlidingWindowLimiter,
    Tiers,
    TokenBucketLimiter,
    parse_limit,
)
from celery_reliable.ratelimit.base import limiter_key


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("100/s", Limit(100, 1.0, 100)),
        ("10/m", Limit(10, 60.0, 10)),
        ("1000/h", Limit(1000, 3600.0, 1000)),
        ("5000/d", Limit(5000, 86400.0, 5000)),
        ("10/5s", Limit(10, 5.0, 10)),
        ("100/s burst 200", Limit(100, 1.0, 200)),
        ("100/s burst 1", Limit(100, 1.0, 1)),
        ("  300 / 15m  ", Limit(300, 900.0)),
        ("1/0.5s", Limit(1, 0.5)),
        ("10 per minute", Limit(10, 60.0)),
        ("10/Seconds", Limit(10, 1.0)),
        ("2/3 hours BURST 4", Limit(2, 10800.0, 4)),
        ("7/day", Limit(7, 86400.0)),
        ("7/2d", Limit(7, 172800.0)),
    ],
)
def test_the_forms_people_write(text: str, limit: Limit) -> None:
    parsed = parse_limit(text)
    assert parsed == limit and parsed.burst is not None
    assert parse_limit(str(parsed)) == parsed  # str() writes a form parse_limit reads back
    assert parse_limit(parsed) is parsed


def test_limit_defaults_and_rendering() -> None:
    limit = parse_limit("10/5s")
    assert (limit.rate, limit.period_s, limit.burst, limit.per_second) == (10, 5.0, 10, 2.0)
    assert str(limit) == "10/5s" and str(parse_limit("100/s burst 200")) == "100/s burst 200"
    assert str(Limit(3, 90)) == "3/90s" and str(Limit(1, 7200)) == "1/2h" and str(Limit(1, 0.25)) == "1/0.25s"
    with pytest.raises(AttributeError):
        limit.rate = 5  # type: ignore[misc]
    assert hash(limit) == hash(Limit(10, 5, 10))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "cannot be read"),
        ("100", "cannot be read"),
        ("100/", "cannot be read"),
        ("/s", "cannot be read"),
        ("1.5/s", "cannot be read"),
        ("-1/s", "cannot be read"),
        ("100/s burst", "cannot be read"),
        ("100/s burst -3", "cannot be read"),
        ("100/sburst 2", "cannot be read"),
        ("100/1e3s", "cannot be read"),
        ("100/x", "unknown period unit 'x'"),
        ("100/ms", "unknown period unit 'ms'"),
        ("100/week", "unknown period unit 'week'"),
        ("0/s", "the rate must be an int of at least 1"),
        ("10/0s", "the period must be positive"),
        ("10/s burst 0", "the burst must be an int of at least 1"),
        ("10/400d", "the period must be between one microsecond and one year"),
    ],
)
def test_bad_limits_say_what_is_accepted(text: str, reason: str) -> None:
    with pytest.raises(BadLimit) as info:
        parse_limit(text)
    error = info.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert (error.text, error.reason, error.name) == (text, reason, "limit")
    assert reason in str(error) and "'100/s', '10/m', '1000/h', '5000/d', '10/5s', '100/s burst 200'" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # how Celery sends errors back: type and args
    assert type(copy) is BadLimit and str(copy) == str(error)


@pytest.mark.parametrize("value", [None, 100, 1.5, b"100/s", ["100/s"]])
def test_a_limit_must_be_text(value: object) -> None:
    with pytest.raises(BadLimit, match="expected a str"):
        parse_limit(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "reason"),
    [((0, 1.0), "rate"), ((True, 1.0), "rate"), ((1.0, 1.0), "rate"), ((1, 0), "period"), ((1, "1s"), "period")],
)
def test_limit_checks_its_numbers(args: tuple[object, object], reason: str) -> None:
    with pytest.raises(BadLimit, match=f"the {reason} must"):
        Limit(*args)  # type: ignore[arg-type]
    with pytest.raises(BadLimit, match="the burst must"):
        Limit(1, 1.0, 0)


def test_decision_headers() -> None:
    allowed = Decision(allowed=True, limit=100, remaining=41, reset_after=5.2, retry_after=0.0)
    assert allowed and allowed.headers() == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "41",
        "RateLimit-Reset": "6",
    }
    denied = Decision(allowed=False, limit=10, remaining=0, reset_after=59.000001, retry_after=0.2)
    assert not denied
    assert denied.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "60",
        "Retry-After": "1",  # rounded up: retrying after 0 s would be refused again
    }
    assert Decision(False, 10, 0, 3.0, 3.0).headers()["Retry-After"] == "3"
    assert Decision(False, 10, 0, 0.0, 0.0).headers()["Retry-After"] == "1"
    with pytest.raises(AttributeError):
        denied.allowed = True  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(denied)) == denied


def test_decision_from_a_script_reply() -> None:
    decision = Decision.from_reply([0, 2, 1_500_000, 250_000, 1_700_000_000_123_456], limit=5)
    assert decision == Decision(False, 5, 2, 1.5, 0.25, 1_700_000_000.123456)
    assert Decision.from_reply([1, 4, 1_000_000, 0, 0], limit=5).retry_after == 0.0


def test_keys_are_hash_tagged_per_name_and_key() -> None:
    assert limiter_key("reliable", "api", "user:42") == "reliable:rl:{api:user:42}"
    braced = limiter_key("reliable", "api", "user:{42}")
    assert braced.startswith("reliable:rl:{#") and braced.count("{") == 1 and braced.endswith("}")
    client = redis.Redis()  # never connects: every check below fails before a command
    assert TokenBucketLimiter(client, 10, 1.0, name="api", prefix="shop").key("u:1") == "shop:rl:{api:u:1}"
    assert GCRALimiter(client, 10, 1.0).key("u:1") == "reliable:rl:{gcra:10:1000000:10:u:1}"
    assert SlidingWindowLimiter(client, 5, 60).name != SlidingWindowLimiter(client, 5, 60, exact=False).name


def test_bad_limiter_arguments_fail_at_once() -> None:
    client = redis.Redis()
    bad: list[tuple[str, object]] = [
        ("client", lambda: TokenBucketLimiter(None, 10, 1.0)),
        ("capacity", lambda: TokenBucketLimiter(client, 0, 1.0)),
        ("refill_rate", lambda: TokenBucketLimiter(client, 10, 0)),
        ("refill_rate", lambda: TokenBucketLimiter(client, 10, float("nan"))),
        ("refill_rate", lambda: TokenBucketLimiter(client, 10, 1e-9)),  # a century to fill
        ("rate", lambda: GCRALimiter(client, 2_000_000, 1.0)),
        ("burst", lambda: GCRALimiter(client, 10, 1.0, 0)),
        ("period", lambda: GCRALimiter(client, 10, -1)),
        ("window", lambda: SlidingWindowLimiter(client, 10, "1m")),  # type: ignore[arg-type]
        ("limit", lambda: SlidingWindowLimiter(client, True, 1)),
        ("name", lambda: SlidingWindowLimiter(client, 10, 1, name="")),
        ("prefix", lambda: GCRALimiter(client, 10, 1, prefix="a\x00b")),
    ]
    for option, build in bad:
        with pytest.raises(ConfigurationError) as info:
            build()  # type: ignore[operator]
        assert info.value.name == option
    limiter = TokenBucketLimiter(client, capacity=10, refill_rate=1.0)
    for key, cost, option in [
        ("", 1, "key"),
        ("k" * 1025, 1, "key"),
        (7, 1, "key"),
        ("k", 0, "cost"),
        ("k", 1.0, "cost"),
    ]:
        with pytest.raises(ConfigurationError) as info:
            limiter.is_allowed(key, cost)  # type: ignore[call-overload]
        assert info.value.name == option
    with pytest.raises(ConfigurationError, match="11 exceeds this limiter's limit of 10: such a request could never"):
        limiter.is_allowed("k", cost=11)


def test_a_limit_builds_each_limiter() -> None:
    client = redis.Redis()
    limit = parse_limit("100/m burst 20")
    gcra = limit.limiter(client)
    assert isinstance(gcra, GCRALimiter) and (gcra.rate, gcra.period_us, gcra.burst, gcra.limit) == (
        100,
        60_000_000,
        20,
        20,
    )
    bucket = limit.limiter(client, "token_bucket", name="api")
    assert isinstance(bucket, TokenBucketLimiter) and (bucket.capacity, bucket.name) == (20, "api")
    assert bucket.refill_rate == pytest.approx(100 / 60)
    window = parse_limit("100/m").limiter(client, "sliding_window")
    assert (
        isinstance(window, SlidingWindowLimiter)
        and window.exact
        and (window.limit, window.window_us) == (100, 60_000_000)
    )
    assert not parse_limit("100/m").limiter(client, "sliding_window_counter").exact  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="a sliding window admits 100 at once by itself; 100/m burst 20 needs"):
        limit.limiter(client, "sliding_window")
    with pytest.raises(ConfigurationError, match="expected 'gcra', 'token_bucket'"):
        limit.limiter(client, "leaky")  # type: ignore[arg-type]


def test_tiers_pick_a_limit_per_call() -> None:
    tiers = Tiers({"free": "10/m", "pro": Limit(1000, 60)}, default="free")
    assert dict(tiers) == {"free": Limit(10, 60.0), "pro": Limit(1000, 60.0)} and len(tiers) == 2
    assert tiers.limit_for() == tiers.limit_for("free") == tiers["free"]
    assert repr(tiers) == "Tiers({'free': '10/m', 'pro': '1000/m'}, default='free')"
    with pytest.raises(ConfigurationError, match=r"unknown tier 'gold'; the tiers are \['free', 'pro'\]"):
        tiers.limit_for("gold")
    with pytest.raises(ConfigurationError, match="no tier named and no default tier"):
        Tiers({"free": "10/m"}).limit_for()
    with pytest.raises(BadLimit, match="'10/fortnight'"):
        Tiers({"free": "10/fortnight"})
    with pytest.raises(ConfigurationError, match="'gold' is not one of the tiers"):
        Tiers({"free": "10/m"}, default="gold")
    with pytest.raises(ConfigurationError, match="non-empty mapping"):
        Tiers({})
    limiter = tiers.limiter(redis.Redis(), "sliding_window", name="api")
    with pytest.raises(ConfigurationError, match="unknown tier 'gold'"):
        limiter.is_allowed("user:1", tier="gold")
    with pytest.raises(ConfigurationError, match="20 exceeds this limiter's limit of 10"):
        limiter.is_allowed("user:1", cost=20)


def test_public_names() -> None:
    assert ratelimit.__all__ == sorted(ratelimit.__all__, key=lambda n: (not n[0].isupper(), n))
    assert all(hasattr(ratelimit, name) for name in ratelimit.__all__)
