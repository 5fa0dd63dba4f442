"""Start-up checks of the ground we stand on."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError


def check_redis(client: Redis) -> list[str]:
    """Return problems with the Redis that holds claims, leases and the deferred set.

    A Redis that evicts keys under memory pressure can drop a claim (a second execution
    runs at once) or parked tasks; one that cannot be asked is reported too.
    """
    problems: list[str] = []
    try:
        cfg = client.config_get("maxmemory*")
    except RedisError as exc:
        return [f"cannot read Redis' eviction policy ({exc}); make sure it is 'noeviction'"]
    policy = cfg.get("maxmemory-policy", "noeviction")
    maxmemory = int(cfg.get("maxmemory", 0) or 0)
    if maxmemory and policy != "noeviction":
        problems.append(
            f"Redis maxmemory-policy is {policy!r} with maxmemory={maxmemory}: under memory pressure "
            "it may evict claims, cached results and parked tasks; set it to 'noeviction'"
        )
    return problems
