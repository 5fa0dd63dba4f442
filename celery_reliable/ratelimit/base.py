"""What every limiter shares: keys, checks, one script call per decision, sync or asyncio.

A limiter is an algorithm (the arguments of its script, the meaning of ``limit``) over a
tiny backend: one atomic Lua script per decision, bound to the client once, when the
limiter is built (:class:`~celery_reliable.scripts.ScriptCall`: ``EVALSHA``, loading the
script on ``NOSCRIPT``). The algorithms import no driver.

The per-call path is kept short, because a decision is one round trip and the client's
own work is a large part of it: the Redis key of each ``key`` string is built and checked
once and then served from a small cache, the arguments of a ``cost=1`` call are built once,
and the scripts answer with one status line rather than an array of five integers.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..config import as_seconds
from ..errors import ConfigurationError
from ..scripts import ScriptCall
from .decision import Decision

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

#: The client type of a limiter: ``redis.Redis`` (decisions) or ``redis.asyncio.Redis`` (coroutines).
C = TypeVar("C")


class UnknownClient:
    """Never instantiated: the first overloads of ``is_allowed`` match it only when the client is ``Any``.

    A limiter over an untyped client then returns ``Any`` (which may be awaited or not),
    rather than the first overload's ``Decision``.
    """


#: Longest key or name accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Longest window or period accepted (one year), in microseconds.
MAX_PERIOD_US = 365 * 86_400 * 1_000_000
#: Redis keys a limiter remembers (built and checked once per ``key`` string); the cache is
#: emptied when full, so a limiter over many keys costs at most this many entries.
KEY_CACHE_SIZE = 4096


def check_text(option: str, value: object) -> str:
    """Return ``value`` if it can be part of a Redis key.

    Raises:
        ConfigurationError: for a non-str, empty, NUL-holding, unencodable or oversized value.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigurationError(option, f"expected a non-empty str without NUL, got {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ConfigurationError(option, f"must be valid unicode (lone surrogate at {exc.start})") from exc
    if size > MAX_KEY_BYTES:
        raise ConfigurationError(option, f"must be at most {MAX_KEY_BYTES} UTF-8 bytes, got {size}")
    return value


def check_count(option: str, value: object, least: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``least``.

    Raises:
        ConfigurationError: otherwise.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(option, f"expected an int, got {type(value).__name__} {value!r}")
    if value < least:
        raise ConfigurationError(option, f"must be at least {least}, got {value}")
    return value


def period_us(option: str, value: object) -> int:
    """Normalise a window or period (seconds as int or float, or a timedelta) to microseconds.

    Raises:
        ConfigurationError: for a wrong type, a non-finite value, below one microsecond or
            above one year.
    """
    seconds = as_seconds(option, value)
    us = round(seconds * 1_000_000) if math.isfinite(seconds) else 0
    if not 1 <= us <= MAX_PERIOD_US:
        raise ConfigurationError(option, f"must be between one microsecond and one year, got {value!r}")
    return us


def limiter_key(prefix: str, name: str, key: str) -> str:
    """The Redis key ``<prefix>:rl:{<name>:<key>}``; braces in name or key are written as a SHA-256.

    The whole ``{...}`` is the Redis Cluster hash tag, so keys spread over the cluster.
    """
    tagged = f"{name}:{key}"
    if "{" in tagged or "}" in tagged:
        tagged = "#" + hashlib.sha256(tagged.encode("utf-8")).hexdigest()
    return f"{prefix}:rl:{{{tagged}}}"


class RateLimiter(Generic[C]):
    """Base of the limiters: one Lua script on the server's clock per decision.

    ``is_allowed`` returns a :class:`Decision` with a ``redis.Redis`` client, and a
    coroutine to await with a ``redis.asyncio.Redis`` one (as redis-py's own commands do).
    Redis errors propagate: failing open or closed is the caller's choice.

    Attributes:
        client: the Redis client.
        name: the state's namespace; limiters with the same name and key share their state.
        prefix: the first part of every key.
        limit: the most requests admitted at once (the largest ``cost`` accepted).
    """

    #: The ``lua/<script>.lua`` deciding for this algorithm.
    script: str = ""

    def __init__(self, client: C, name: str, prefix: str, limit: int) -> None:
        if client is None or not hasattr(client, "register_script"):
            raise ConfigurationError("client", f"expected a redis.Redis or redis.asyncio.Redis, got {client!r}")
        self.client = client
        self.name = check_text("name", name)
        self.prefix = check_text("prefix", prefix)
        self.limit = limit
        self._async = inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        self._script = ScriptCall(client, self.script)
        self._argv1 = tuple(self._args(1))
        self._keys: dict[str, str] = {}

    def _args(self, cost: int) -> list[int | str]:
        """The script's ARGV for a request of ``cost``."""
        raise NotImplementedError

    def key(self, key: str) -> str:
        """The Redis key holding the state of ``key``.

        Raises:
            ConfigurationError: for a key that is not a non-empty str without NUL, of at
                most :data:`MAX_KEY_BYTES` UTF-8 bytes.
        """
        keys = self._keys
        found = keys.get(key) if key.__class__ is str else None
        if found is None:
            found = limiter_key(self.prefix, self.name, check_text("key", key))
            if len(keys) >= KEY_CACHE_SIZE:
                keys.clear()  # atomic under the GIL, unlike evicting one entry while others insert
            keys[key] = found
        return found

    def _check_cost(self, cost: object) -> None:
        if check_count("cost", cost) > self.limit:
            raise ConfigurationError(
                "cost", f"{cost} exceeds this limiter's limit of {self.limit}: such a request could never be allowed"
            )

    @overload
    def is_allowed(self: RateLimiter[UnknownClient], key: str, cost: int = 1) -> Any: ...
    @overload
    def is_allowed(self: RateLimiter[Redis], key: str, cost: int = 1) -> Decision: ...
    @overload
    def is_allowed(self: RateLimiter[AsyncRedis], key: str, cost: int = 1) -> Coroutine[Any, Any, Decision]: ...
    @overload
    def is_allowed(self, key: str, cost: int = 1) -> Any: ...

    def is_allowed(self, key: str, cost: int = 1) -> Any:
        """Decide, atomically and in one round trip, whether a request on ``key`` may go ahead.

        Args:
            key: what is limited (``f"user:{user_id}"``, ``"stripe"``, ...).
            cost: how many requests this one counts for (1 to ``limit``).

        Returns:
            A :class:`Decision` (truthy when allowed); with an asyncio client, a coroutine
            resolving to it.

        Raises:
            ConfigurationError: at once, for a bad key or a ``cost`` that is not an int
                between 1 and ``limit`` (a request that could never be admitted).
        """
        redis_key = self._keys.get(key) if key.__class__ is str else None
        if redis_key is None:
            redis_key = self.key(key)
        if cost.__class__ is not int or not 0 < cost <= self.limit:
            self._check_cost(cost)
        reply = self._script(1, redis_key, *(self._argv1 if cost == 1 else self._args(cost)))
        if self._async:
            return self._decide_later(reply)
        return Decision.from_reply(reply, self.limit)

    async def _decide_later(self, reply: Any) -> Decision:
        return Decision.from_reply(await reply, self.limit)
