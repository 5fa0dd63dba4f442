"""Load the Lua scripts shipped beside this module and register them per client."""

from __future__ import annotations

import weakref
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis
    from redis.commands.core import Script

SCRIPT_NAMES = (
    "deferred_park",
    "deferred_park_waiting",
    "deferred_sweep",
    "deferred_take",
    "deferred_wake",
    "idem_claim",
    "idem_complete",
    "lease_release",
    "lease_renew",
    "lock_acquire",
    "lock_release",
    "publish_once",
)


@cache
def script_source(name: str) -> str:
    """Return the text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_per_client: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def script_for(client: Any, name: str) -> Any:
    """Return script ``name`` registered on ``client`` (sync or asyncio), once per client.

    Used for clients the caller owns (standalone locks and limiters); the result is a
    redis-py ``Script`` or ``AsyncScript`` calling EVALSHA and reloading on NOSCRIPT.
    """
    scripts = _per_client.get(client)
    if scripts is None:
        scripts = {}
        _per_client[client] = scripts
    found = scripts.get(name)
    if found is None:
        found = scripts[name] = client.register_script(script_source(name))
    return found


class Scripts:
    """Every script registered once on one Redis client (EVALSHA, reloaded on NOSCRIPT)."""

    def __init__(self, client: Redis) -> None:
        self._scripts: dict[str, Script] = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    def __getattr__(self, name: str) -> Script:
        try:
            return self.__dict__["_scripts"][name]
        except KeyError:
            raise AttributeError(name) from None
