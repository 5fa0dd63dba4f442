"""Per-app access to the stores, through this process's clients."""

from __future__ import annotations

import logging
import random
import uuid
from typing import TYPE_CHECKING

from .clients import engine_for, redis_and_scripts
from .config import ReliableConfig, get_config
from .deferred.store import DeferredSet
from .idempotency import db_store
from .idempotency.redis_store import RedisIdempotency

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)


class Runtime:
    """The stores of one app. Cheap to build; the clients behind it are per process."""

    def __init__(self, app: Celery, config: ReliableConfig | None = None) -> None:
        self.app = app
        self.config = config or get_config(app)

    @property
    def redis(self) -> Redis:
        """This process's Redis client."""
        return redis_and_scripts(self.config.redis_url)[0]

    def idempotency(self) -> RedisIdempotency:
        """The Redis tier of the idempotency store."""
        client, scripts = redis_and_scripts(self.config.redis_url)
        return RedisIdempotency(client, scripts, self.config.key_prefix)

    def deferred(self) -> DeferredSet:
        """The deferred set."""
        client, scripts = redis_and_scripts(self.config.redis_url)
        return DeferredSet(client, scripts, self.config.key_prefix)

    def engine(self) -> Engine:
        """This process's engine for ``reliable_database_url``."""
        return engine_for(self.config.database_url)

    @property
    def has_database(self) -> bool:
        """Whether a database backs the Redis tier."""
        return self.config.database_url is not None

    def jitter_ms(self) -> int:
        """A random extra wait for a deferral."""
        return random.randint(0, self.config.defer_jitter_ms) if self.config.defer_jitter_ms else 0

    def warm_up(self, batch: int = 1000) -> int:
        """Copy live records from the database into Redis after Redis lost its data.

        Runs only when the epoch key is missing, under a short lock so one worker does
        it. Until it finishes, workers consult the database before running a key.

        Returns:
            the number of records copied (0 when Redis was already warm).
        """
        if not self.has_database:
            return 0
        idem = self.idempotency()
        if idem.is_warm():
            return 0
        client = self.redis
        lock_key = f"{self.config.key_prefix}:warmup"
        token = uuid.uuid4().hex
        if not client.set(lock_key, token, nx=True, px=120_000):
            return 0
        copied = 0
        try:
            pipe = client.pipeline(transaction=False)
            for key, record, ttl_ms in db_store.live_records(self.engine(), batch):
                done, _, _ = idem.keys(key)
                pipe.set(done, record.to_json(), px=ttl_ms, nx=True)
                copied += 1
                if copied % batch == 0:
                    pipe.execute()
            pipe.execute()
            idem.mark_warm()
            logger.info("celery-reliable: Redis re-warmed with %d idempotency records", copied)
        finally:
            idem.scripts.lease_release(keys=[lock_key], args=[token])
        return copied


def runtime(app: Celery) -> Runtime:
    """Return the app's runtime (cached on the app)."""
    found: Runtime | None = app.__dict__.get("_celery_reliable_runtime")
    if found is None:
        found = Runtime(app)
        app.__dict__["_celery_reliable_runtime"] = found
    return found
