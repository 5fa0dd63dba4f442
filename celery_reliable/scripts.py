"""Load the Lua scripts shipped beside this module and register them per client."""

from __future__ import annotations

import hashlib
import inspect
import weakref
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

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
    return registered(client, name, script_source)


def registered(client: Any, name: str, source: Any) -> Any:
    """The script ``name`` registered on ``client`` once; ``source(name)`` gives its text the first time."""
    scripts = _per_client.get(client)
    if scripts is None:
        scripts = {}
        _per_client[client] = scripts
    found = scripts.get(name)
    if found is None:
        found = scripts[name] = client.register_script(source(name))
    return found


class ScriptCall:
    """One script on one client, called by SHA1 straight through ``execute_command``.

    The fast path for callers that hold the client and call the same script again and
    again (the rate limiters): no per-call registry lookup and none of the argument
    shuffling of redis-py's ``Script.__call__``. Like ``Script``, a ``NOSCRIPT`` answer
    (a server restarted or flushed its script cache, or a failover) loads the script and
    sends the call once more. With ``redis.asyncio`` clients, calls return coroutines.
    Pipelines are not supported: use :func:`script_for` there.

    Args:
        client: ``redis.Redis``, ``redis.asyncio.Redis`` or a cluster client.
        name: the script, ``lua/<name>.lua``.

    Attributes:
        sha: the SHA1 the calls name (the server's answer to ``SCRIPT LOAD`` once loaded).
    """

    __slots__ = ("client", "is_async", "sha", "source")

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.source = script_source(name)
        get_encoder = getattr(client, "get_encoder", None)
        encoded = get_encoder().encode(self.source) if get_encoder is not None else self.source.encode("utf-8")
        self.sha: str = hashlib.sha1(encoded).hexdigest()
        self.is_async = inspect.iscoroutinefunction(getattr(client, "execute_command", None))

    def __call__(self, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA sha numkeys *keys_and_args``; a coroutine with an asyncio client.

        Raises:
            redis.exceptions.RedisError: whatever the server or the connection raised,
                except one ``NOSCRIPT``, which is answered by loading the script.
        """
        if self.is_async:
            return self._call_async(numkeys, keys_and_args)
        try:
            return self.client.execute_command("EVALSHA", self.sha, numkeys, *keys_and_args)
        except NoScriptError:
            self.sha = self.client.script_load(self.source)
            return self.client.execute_command("EVALSHA", self.sha, numkeys, *keys_and_args)

    async def _call_async(self, numkeys: int, keys_and_args: tuple[Any, ...]) -> Any:
        try:
            return await self.client.execute_command("EVALSHA", self.sha, numkeys, *keys_and_args)
        except NoScriptError:
            self.sha = await self.client.script_load(self.source)
            return await self.client.execute_command("EVALSHA", self.sha, numkeys, *keys_and_args)


class Scripts:
    """Every script registered once on one Redis client (EVALSHA, reloaded on NOSCRIPT)."""

    def __init__(self, client: Redis) -> None:
        self._scripts: dict[str, Script] = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    def __getattr__(self, name: str) -> Script:
        try:
            return self.__dict__["_scripts"][name]
        except KeyError:
            raise AttributeError(name) from None
