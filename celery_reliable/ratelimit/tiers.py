"""Tiers: one limit per plan (``{"free": "10/m", "pro": "1000/m"}``), picked per call."""

from __future__ import annotations

from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, overload

from ..errors import ConfigurationError
from .base import C, RateLimiter, UnknownClient, check_text
from .decision import Decision
from .limit import Algorithm, Limit, parse_limit

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis


class Tiers(Mapping[str, Limit]):
    """Limits by tier name, read once; a mapping of tier names to :class:`Limit`.

    Args:
        limits: tier name to limit, as a string (``"10/m"``, ``"1000/m burst 50"``) or a
            :class:`Limit`.
        default: the tier used when a call names none (``None``: a tier must be named).

    Raises:
        BadLimit: for a limit that cannot be read.
        ConfigurationError: for no tiers, a bad tier name, or an unknown default.

    Example::

        tiers = Tiers({"free": "10/m", "pro": "1000/m"}, default="free")
        limiter = tiers.limiter(redis_client, name="api")
        decision = limiter.is_allowed(f"user:{user.id}", tier=user.plan)
    """

    def __init__(self, limits: Mapping[str, str | Limit], default: str | None = None) -> None:
        if not isinstance(limits, Mapping) or not limits:
            raise ConfigurationError("tiers", f"expected a non-empty mapping of tier names to limits, got {limits!r}")
        self._limits = {check_text("tier", tier): parse_limit(limit) for tier, limit in limits.items()}
        if default is not None and default not in self._limits:
            raise ConfigurationError("default", f"{default!r} is not one of the tiers {sorted(self._limits)}")
        self.default = default

    def __getitem__(self, tier: str) -> Limit:
        return self._limits[tier]

    def __iter__(self) -> Iterator[str]:
        return iter(self._limits)

    def __len__(self) -> int:
        return len(self._limits)

    def __repr__(self) -> str:
        limits = ", ".join(f"{tier!r}: {str(limit)!r}" for tier, limit in self._limits.items())
        return f"Tiers({{{limits}}}, default={self.default!r})"

    def limit_for(self, tier: str | None = None) -> Limit:
        """The limit of ``tier`` (the default tier when ``None``).

        Raises:
            ConfigurationError: for an unknown tier, or ``None`` without a default.
        """
        return self._limits[self._resolve(tier)]

    def _resolve(self, tier: str | None) -> str:
        name = self.default if tier is None else tier
        if name is None:
            raise ConfigurationError("tier", f"no tier named and no default tier; the tiers are {sorted(self)}")
        if not isinstance(name, str) or name not in self._limits:
            raise ConfigurationError("tier", f"unknown tier {tier!r}; the tiers are {sorted(self)}")
        return name

    def limiter(
        self, client: C, algorithm: Algorithm = "gcra", *, name: str, prefix: str = "reliable"
    ) -> TieredLimiter[C]:
        """A limiter applying each call's tier.

        Each tier keeps its own state (namespace ``<name>:<tier>``): a customer who changes
        plan starts the new tier afresh. (Carrying usage over would mean different things
        to different algorithms: tokens, time owed or a log.)

        Args:
            client: ``redis.Redis`` or ``redis.asyncio.Redis``.
            algorithm: as for :meth:`Limit.limiter` (every tier uses the same one).
            name: what the tiers protect (``"api"``).
            prefix: first part of the Redis keys.

        Raises:
            ConfigurationError: for a tier the algorithm cannot keep, or a bad name.
        """
        return TieredLimiter(self, client, algorithm, name=name, prefix=prefix)


class TieredLimiter(Generic[C]):
    """One limiter per tier, built once; see :meth:`Tiers.limiter`."""

    def __init__(self, tiers: Tiers, client: C, algorithm: Algorithm, *, name: str, prefix: str) -> None:
        self.tiers = tiers
        self.name = check_text("name", name)
        self._limiters: dict[str, RateLimiter[C]] = {
            tier: limit.limiter(client, algorithm, name=f"{self.name}:{tier}", prefix=prefix)
            for tier, limit in tiers.items()
        }

    @overload
    def is_allowed(self: TieredLimiter[UnknownClient], key: str, tier: str | None = None, cost: int = 1) -> Any: ...
    @overload
    def is_allowed(self: TieredLimiter[Redis], key: str, tier: str | None = None, cost: int = 1) -> Decision: ...
    @overload
    def is_allowed(
        self: TieredLimiter[AsyncRedis], key: str, tier: str | None = None, cost: int = 1
    ) -> Coroutine[Any, Any, Decision]: ...
    @overload
    def is_allowed(self, key: str, tier: str | None = None, cost: int = 1) -> Any: ...

    def is_allowed(self, key: str, tier: str | None = None, cost: int = 1) -> Any:
        """Decide a request on ``key`` under the limit of ``tier``; see :meth:`RateLimiter.is_allowed`.

        Raises:
            ConfigurationError: for an unknown tier, or a bad key or cost.
        """
        return self._limiters[self.tiers._resolve(tier)].is_allowed(key, cost)
