"""Tiers: one bulkhead per tier from a mapping such as ``{"critical": 50, "standard": 20, "optional": 10}``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..errors import ConfigurationError
from .bulkhead import Bulkhead
from .names import check_size

#: The tiers of the design (the seed's critical / standard / optional), most important
#: first, with sizes inside the seed's "min 10, max 50" concurrent holders.
DEFAULT_TIERS: dict[str, int] = {"critical": 50, "standard": 20, "optional": 10}

#: A tier name: also a queue name and a worker node name, so letters, digits, ``_ . -``.
TIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_tiers(sizes: object, setting: str = "reliable_bulkheads") -> dict[str, int]:
    """Check a mapping of tier names to bulkhead sizes and return it as a plain dict.

    Args:
        sizes: tier name to size, such as ``{"critical": 50, "standard": 20}``.
        setting: the name used in error messages.

    Raises:
        ConfigurationError: for something other than a non-empty mapping, a tier name
            that is not 1 to 64 letters, digits, ``_``, ``.`` or ``-`` (starting with a
            letter or digit), or a size that is not a positive int.
    """
    if not isinstance(sizes, Mapping) or not sizes:
        raise ConfigurationError(
            setting, f"expected a non-empty mapping of tier names to sizes, such as {DEFAULT_TIERS}, got {sizes!r}"
        )
    checked: dict[str, int] = {}
    for tier, size in sizes.items():
        if not isinstance(tier, str) or not TIER_NAME.fullmatch(tier):
            raise ConfigurationError(
                setting,
                f"tier name {tier!r} must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(it also names the tier's queue and workers)",
            )
        checked[tier] = check_size(size, f"{setting}[{tier!r}]")
    return checked


def tier_bulkheads(
    sizes: Mapping[str, int],
    *,
    client: Any,
    lease: float | timedelta = 30.0,
    prefix: str = "reliable",
    setting: str = "reliable_bulkheads",
) -> dict[str, Bulkhead[Any]]:
    """One :class:`Bulkhead` per tier, named after the tier.

    Args:
        sizes: tier name to size (checked by :func:`check_tiers`).
        client: ``redis.Redis`` or ``redis.asyncio.Redis``, shared by every tier.
        lease: the lease of every tier's slots.
        prefix: first part of the Redis keys.
        setting: the name used in error messages.

    Raises:
        ConfigurationError: for bad tiers, a bad lease, prefix or client.
    """
    return {
        tier: Bulkhead(tier, size, lease=lease, client=client, prefix=prefix)
        for tier, size in check_tiers(sizes, setting).items()
    }


def bulkhead_for(value: object, tiers: Mapping[str, Bulkhead[Any]], option: str = "bulkhead") -> Bulkhead[Any]:
    """Resolve a task's ``bulkhead=`` option: a tier name, or a :class:`Bulkhead` used as is.

    Raises:
        ConfigurationError: for an unknown tier name or a value of another type.
    """
    if isinstance(value, Bulkhead):
        return value
    if isinstance(value, str):
        try:
            return tiers[value]
        except KeyError:
            raise ConfigurationError(option, f"unknown tier {value!r}; the tiers are {sorted(tiers)}") from None
    raise ConfigurationError(option, f"expected a tier name or a Bulkhead, got {type(value).__name__} {value!r}")
