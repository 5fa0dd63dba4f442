"""Bulkhead arguments, keys, tiers, on-full choices and errors (no services needed)."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio

from celery_reliable import errors
from celery_reliable.bulkhead import (
    DEFAULT_TIERS,
    Bulkhead,
    Slot,
    bulkhead_for,
    check_on_full,
    check_tiers,
    tier_bulkheads,
)
from celery_reliable.bulkhead.names import hold_key, slots_key
from celery_reliable.errors import BulkheadFull, ConfigurationError, QueueFull, ReliableError

# A client that never connects: these tests fail before any command is sent.
CLIENT = redis.Redis(host="127.0.0.1", port=1)


@pytest.mark.parametrize(
    ("kwargs", "option", "fragment"),
    [
        ({"name": ""}, "name", "non-empty str"),
        ({"name": 7}, "name", "non-empty str"),
        ({"name": "a\x00b"}, "name", "without NUL"),
        ({"name": "x" * 1025}, "name", "at most 1024"),
        ({"size": 0}, "size", "at least 1"),
        ({"size": -3}, "size", "at least 1"),
        ({"size": True}, "size", "expected an int"),
        ({"size": 2.5}, "size", "expected an int"),
        ({"size": "10"}, "size", "expected an int"),
        ({"lease": 0}, "lease", "between 0.1 second and one day"),
        ({"lease": 0.05}, "lease", "between 0.1 second and one day"),
        ({"lease": -1}, "lease", "between 0.1 second and one day"),
        ({"lease": math.nan}, "lease", "between 0.1 second and one day"),
        ({"lease": math.inf}, "lease", "between 0.1 second and one day"),
        ({"lease": timedelta(days=2)}, "lease", "between 0.1 second and one day"),
        ({"lease": "30"}, "lease", "expected seconds"),
        ({"lease": True}, "lease", "expected seconds"),
        ({"prefix": ""}, "prefix", "non-empty str"),
        ({"client": None}, "client", "redis.Redis or redis.asyncio.Redis"),
        ({"client": object()}, "client", "redis.Redis or redis.asyncio.Redis"),
    ],
)
def test_bad_arguments_name_the_option(kwargs: dict[str, Any], option: str, fragment: str) -> None:
    args: dict[str, Any] = {"name": "critical", "size": 5, "client": CLIENT, **kwargs}
    name, size = args.pop("name"), args.pop("size")
    with pytest.raises(ConfigurationError) as caught:
        Bulkhead(name, size, **args)
    assert caught.value.name == option
    assert str(caught.value).startswith(f"{option}: ") and fragment in str(caught.value)


def test_durations_are_normalised_to_milliseconds() -> None:
    assert Bulkhead("a", 1, client=CLIENT).lease_ms == 30_000
    assert Bulkhead("a", 1, lease=timedelta(minutes=2), client=CLIENT).lease_ms == 120_000
    assert Bulkhead("a", 1, lease=0.1, client=CLIENT).lease_ms == 100
    assert Bulkhead("a", 1, lease=86_400, client=CLIENT).lease_ms == 86_400_000


def test_keys_carry_one_hash_tag_per_bulkhead() -> None:
    bulkhead = Bulkhead("payments-api", 3, client=CLIENT, prefix="shop")
    assert bulkhead.key == "shop:bh:{payments-api}"
    assert bulkhead.hold_key == "shop:bh:{payments-api}:hold" == hold_key(bulkhead.key)
    assert Bulkhead("ключ 🔒", 1, client=CLIENT).key == "reliable:bh:{ключ 🔒}"
    # Braces would end the hash tag early: such a name is written as its SHA-256.
    braced = slots_key("reliable", "a}b{c")
    assert braced.startswith("reliable:bh:{#") and braced.count("{") == 1 and braced.count("}") == 1
    assert slots_key("reliable", "a}b{c") != slots_key("reliable", "a}b{d")


def test_client_kind_is_detected() -> None:
    assert not Bulkhead("a", 1, client=CLIENT).is_async
    assert Bulkhead("a", 1, client=redis.asyncio.Redis(host="127.0.0.1", port=1)).is_async


@pytest.mark.parametrize("owner", ["", 5, "a\x00"])
def test_a_bad_owner_fails_before_any_command(owner: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^owner: "):
        Bulkhead("a", 1, client=CLIENT).try_acquire(owner)


def test_a_slot_of_another_bulkhead_is_refused() -> None:
    bulkhead = Bulkhead("a", 1, client=CLIENT)
    with pytest.raises(ConfigurationError, match="expected a Slot of bulkhead 'a'"):
        bulkhead.release(Slot("b", "owner", 1000, 0))
    with pytest.raises(ConfigurationError, match="expected a Slot of bulkhead 'a'"):
        bulkhead.renew("owner")  # type: ignore[call-overload]


def test_async_with_needs_an_asyncio_client() -> None:
    import asyncio

    async def enter() -> None:
        async with Bulkhead("a", 1, client=CLIENT):
            pass

    with pytest.raises(ConfigurationError, match=r"async with needs a redis\.asyncio\.Redis"):
        asyncio.run(enter())
    with (
        pytest.raises(ConfigurationError, match=r"with needs a redis\.Redis client"),
        Bulkhead("a", 1, client=redis.asyncio.Redis(host="127.0.0.1", port=1)),
    ):
        pass


# -- tiers --------------------------------------------------------------------------------


def test_tiers_are_checked_and_built() -> None:
    sizes = {"critical": 50, "standard": 20, "optional": 5}
    assert check_tiers(sizes) == sizes and check_tiers(sizes) is not sizes
    assert all(10 <= size <= 50 for size in DEFAULT_TIERS.values())  # the seed's "min 10, max 50"
    built = tier_bulkheads(DEFAULT_TIERS, client=CLIENT, lease=10, prefix="shop")
    assert list(built) == ["critical", "standard", "optional"]
    assert {(b.name, b.size, b.lease_ms, b.key) for b in built.values()} == {
        (tier, size, 10_000, f"shop:bh:{{{tier}}}") for tier, size in DEFAULT_TIERS.items()
    }
    assert all(b.client is CLIENT for b in built.values())


@pytest.mark.parametrize(
    ("sizes", "fragment"),
    [
        (None, "expected a non-empty mapping of tier names to sizes"),
        ({}, "expected a non-empty mapping of tier names to sizes"),
        ([("critical", 5)], "expected a non-empty mapping of tier names to sizes"),
        ({"": 5}, "tier name '' must be 1 to 64 letters"),
        ({"has space": 5}, "tier name 'has space' must be 1 to 64 letters"),
        ({"-lead": 5}, "starting with a letter or digit"),
        ({"x" * 65: 5}, "must be 1 to 64 letters"),
        ({7: 5}, "tier name 7 must be"),
    ],
)
def test_bad_tiers_are_refused_clearly(sizes: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_tiers(sizes)
    assert caught.value.name == "reliable_bulkheads" and fragment in str(caught.value)


@pytest.mark.parametrize(
    ("size", "fragment"),
    [(0, "must be at least 1, got 0"), (-1, "at least 1"), (True, "expected an int, got bool"),
     (2.5, "expected an int, got float"), ("10", "expected an int, got str")],
)
def test_bad_tier_sizes_name_the_tier(size: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_tiers({"critical": 50, "optional": size})
    assert caught.value.name == "reliable_bulkheads['optional']" and fragment in str(caught.value)


def test_a_task_option_resolves_to_a_tier_or_a_bulkhead() -> None:
    tiers = tier_bulkheads({"critical": 2, "optional": 1}, client=CLIENT)
    own = Bulkhead("stripe", 4, client=CLIENT)
    assert bulkhead_for("critical", tiers) is tiers["critical"]
    assert bulkhead_for(own, tiers) is own
    with pytest.raises(ConfigurationError, match=r"unknown tier 'gold'; the tiers are \['critical', 'optional'\]"):
        bulkhead_for("gold", tiers)
    with pytest.raises(ConfigurationError, match="expected a tier name or a Bulkhead, got int 3"):
        bulkhead_for(3, tiers)


def test_on_full_choices() -> None:
    def fallback(*args: Any) -> str:
        return "cached"

    assert check_on_full("defer") == "defer" and check_on_full("reject") == "reject"
    assert check_on_full(fallback) is fallback
    for bad in ("retry", None, 3):
        with pytest.raises(ConfigurationError, match="expected 'defer', 'reject' or a fallback callable"):
            check_on_full(bad)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (BulkheadFull("critical", 50, 0.25), ["bulkhead 'critical' is full", "50 of 50", "try again in 0.25s"]),
        (
            QueueFull("reports", 12_345, 10_000),
            ["queue 'reports' holds 12,345 messages", "max_queue_depth=10,000", "nothing was published",
             "retry later", "add workers"],
        ),
    ],
)
def test_errors_carry_data_and_come_back_from_their_args(error: ReliableError, fragments: list[str]) -> None:
    assert isinstance(error, ReliableError)
    assert all(fragment in str(error) for fragment in fragments), str(error)
    # Celery rebuilds a worker's exception from its type and JSON-encoded args.
    rebuilt = type(error)(*json.loads(json.dumps(error.args)))
    assert str(rebuilt) == str(error) and rebuilt.args == error.args


def test_error_attributes_and_the_drawn_tree() -> None:
    full = BulkheadFull("optional", 5, 1.5)
    assert (full.name, full.size, full.retry_after) == ("optional", 5, 1.5)
    shed = QueueFull("q", 10, 10)
    assert (shed.queue, shed.depth, shed.max_depth) == ("q", 10, 10)
    assert errors.__doc__ is not None
    assert "BulkheadFull" in errors.__doc__ and "QueueFull" in errors.__doc__


def test_an_unknown_tier_fails_when_the_task_is_sent() -> None:
    from celery import Celery

    from celery_reliable import ReliableTask, install

    app = Celery("tiers", set_as_current=False, broker="redis://127.0.0.1:1/0")  # never reached
    app.conf.reliable_bulkheads = {"critical": 5, "optional": 1}
    install(app)

    @app.task(shared=False, base=ReliableTask, name="tiers.gold", bulkhead="gold")
    def gold() -> None:
        return None

    with pytest.raises(
        ConfigurationError,
        match=r"task tiers.gold uses bulkhead='gold', which reliable_bulkheads does not list; "
        r"the tiers are \['critical', 'optional'\]",
    ):
        gold.delay()
