"""RetryBudget: retries shared by every worker, capped at a fraction of recent calls (Finagle).

Retrying each failed call up to five times multiplies the load on a dependency that is
already failing by five. A budget caps retries at ``ratio`` of the calls of the last
``window`` (plus a small floor), so an outage costs at most ``1 + ratio`` times the
normal load, while an isolated failure still gets its retry.

Every call (first attempt) deposits ``ratio`` of a retry, every retry withdraws one, and
``min_per_second * window`` retries are always allowed on top. Deposits and withdrawals
expire after ``window``, so the budget follows recent traffic.

Storage: one Redis hash per budget, ``<prefix>:budget:{<name>}``, with two counters per
time bucket (``c:<bucket>`` calls, ``r:<bucket>`` retries). A window is ten buckets of
``window / 10`` (at least 1 ms), so an entry counts for between 0.9 and 1.0 window; each
script deletes expired buckets, so the hash never holds more than 22 fields, and the key
expires when unused. Each operation is one Lua script on the server's clock
(``retry_budget.lua``: call, spend, state). Balances are kept in integer
micro-retries, so ``ratio * calls`` adds up exactly.

The same object works with ``redis.Redis`` (``record_call()``, ``try_spend()``,
``state()``) and ``redis.asyncio.Redis`` (``arecord_call()``, ``atry_spend()``,
``astate()``). Redis errors propagate: whether a retry goes ahead without the budget is
the caller's choice.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, TypedDict

from ..errors import ConfigurationError
from ..scripts import script_for
from .checks import count, number, seconds_ms

#: Micro-retries per retry: the budget's integer unit.
SCALE = 1_000_000
#: Buckets per window.
BUCKETS = 10
#: Longest window (one day).
MAX_WINDOW_MS = 86_400_000


class BudgetState(TypedDict):
    """A budget as :meth:`RetryBudget.state` sees it (a plain dict)."""

    name: str
    #: retries that may be spent now (may dip below 0 when deposits expire before withdrawals)
    balance: float
    #: calls recorded in the window
    calls: int
    #: retries spent in the window
    retries: int
    #: retries always allowed per window (min_per_second * window)
    reserve: float
    ratio: float
    #: seconds
    window: float


def budget_key(prefix: str, name: str) -> str:
    """The Redis key of budget ``name``; a name with ``{`` or ``}`` is written as its SHA-256."""
    if "{" in name or "}" in name:
        name = "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{prefix}:budget:{{{name}}}"


def _check_text(option: str, value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value.encode("utf-8", "replace")) > 1024:
        raise ConfigurationError(option, f"expected a non-empty str of at most 1024 bytes without NUL, got {value!r}")
    return value


class RetryBudget:
    """A retry budget in Redis, shared by every process that uses the same ``name``.

    Args:
        client: ``redis.Redis`` or ``redis.asyncio.Redis``.
        name: the budget's name, usually the dependency's (``"stripe"``).
        ratio: retries earned per call, in (0, 1] (default 0.2: at most 20 % extra load).
        min_per_second: retries per second always allowed, 0 or more (default 1).
        window: seconds (or a timedelta) deposits and withdrawals count for (default 10).
        prefix: prefix of the Redis key (default ``"reliable"``).

    Raises:
        ConfigurationError: for a wrong client, name or number.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        window: float | timedelta = 10.0,
        prefix: str = "reliable",
    ) -> None:
        if client is None or not hasattr(client, "register_script"):
            raise ConfigurationError("client", f"expected a redis.Redis or redis.asyncio.Redis, got {client!r}")
        self.client = client
        self.name = _check_text("name", name)
        self.ratio = number("ratio", ratio, 0.0, inclusive=False, most=1.0)
        self.min_per_second = number("min_per_second", min_per_second, 0.0)
        self.window_ms = seconds_ms("window", window)
        if self.window_ms > MAX_WINDOW_MS:
            raise ConfigurationError("window", f"must be at most one day, got {window!r}")
        self.key = budget_key(_check_text("prefix", prefix), name)
        self._deposit = round(self.ratio * SCALE)
        if self._deposit < 1:
            raise ConfigurationError("ratio", f"must be at least 1e-6, got {ratio!r}")
        self._reserve = round(self.min_per_second * self.window_ms * SCALE / 1000)
        if self._reserve > 10**9 * SCALE:
            raise ConfigurationError("min_per_second", "min_per_second * window exceeds a billion retries")
        self._bucket_ms = max(1, self.window_ms // BUCKETS)
        self._buckets = self.window_ms // self._bucket_ms
        from redis.asyncio import Redis as AsyncRedis

        self._async = isinstance(client, AsyncRedis)

    def __repr__(self) -> str:
        return (
            f"RetryBudget({self.name!r}, ratio={self.ratio}, min_per_second={self.min_per_second}, "
            f"window={self.window_ms / 1000})"
        )

    # -- shared ---------------------------------------------------------------------

    def _call(self, op: str, n: int, *, want_async: bool) -> Any:
        if want_async != self._async:
            use = "the a* methods with redis.asyncio.Redis" if self._async else "the plain methods with redis.Redis"
            raise ConfigurationError("client", f"{self.client!r} does not fit this method; use {use}")
        keys, args = self.request(op, n)
        return script_for(self.client, "retry_budget")(keys=keys, args=args)

    def request(self, op: str, n: int = 1) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``retry_budget.lua`` for ``op`` (``"call"``, ``"spend"``, ``"state"``).

        For callers that run the script themselves (a task's admission round trip).
        """
        return [self.key], [self._bucket_ms, self._buckets, op, n, self._deposit, self._reserve]

    def _state(self, reply: Any) -> BudgetState:
        _, balance, calls, retries = (int(x) for x in reply)
        return BudgetState(
            name=self.name,
            balance=balance / SCALE,
            calls=calls,
            retries=retries,
            reserve=self._reserve / SCALE,
            ratio=self.ratio,
            window=self.window_ms / 1000,
        )

    # -- redis.Redis ----------------------------------------------------------------

    def record_call(self, cost: int = 1) -> None:
        """Record ``cost`` calls (first attempts), each depositing ``ratio`` of a retry.

        Raises:
            ConfigurationError: for a ``cost`` that is not an int of at least 1.
        """
        self._call("call", count("cost", cost, 1), want_async=False)

    def try_spend(self, cost: int = 1) -> bool:
        """Withdraw ``cost`` retries if the balance holds them; ``False`` means do not retry.

        Raises:
            ConfigurationError: for a ``cost`` that is not an int of at least 1.
        """
        return bool(int(self._call("spend", count("cost", cost, 1), want_async=False)[0]))

    def state(self) -> BudgetState:
        """The balance, calls and retries of the current window (for observability)."""
        return self._state(self._call("state", 0, want_async=False))

    # -- redis.asyncio.Redis --------------------------------------------------------

    async def arecord_call(self, cost: int = 1) -> None:
        """:meth:`record_call` for ``redis.asyncio``."""
        await self._call("call", count("cost", cost, 1), want_async=True)

    async def atry_spend(self, cost: int = 1) -> bool:
        """:meth:`try_spend` for ``redis.asyncio``."""
        return bool(int((await self._call("spend", count("cost", cost, 1), want_async=True))[0]))

    async def astate(self) -> BudgetState:
        """:meth:`state` for ``redis.asyncio``."""
        return self._state(await self._call("state", 0, want_async=True))
