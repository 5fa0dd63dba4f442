"""Redis losing its data (FLUSHALL, restart) must not cause a second effect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import Engine

from celery_reliable.config import reset_config
from tests.conftest import effects
from tests.harness import RedisServer, wait_until
from tests.worker_app import app, charge, external_effect


@pytest.fixture()
def env(private_redis: RedisServer) -> Iterator[dict[str, str]]:
    """Point this process and the workers at the private Redis; restore afterwards."""
    original = app.conf.reliable_redis_url
    app.conf.reliable_redis_url = private_redis.url
    reset_config(app)
    yield {"TEST_RELIABLE_REDIS": private_redis.url, "TEST_CLAIM_LEASE": "2"}
    app.conf.reliable_redis_url = original
    reset_config(app)


def test_flushall_mid_run_does_not_repeat_effects(
    workers, ledger, engine: Engine, private_redis: RedisServer, env: dict[str, str]
) -> None:
    store = redis.Redis.from_url(private_redis.url)
    workers("w1", env)
    workers("w2", env)
    n = 60
    first = [r for i in range(n) for r in (charge.delay(f"f{i}", i), external_effect.delay(i))]
    wait_until(
        lambda: sum(effects(engine).values()) >= n // 2 and ledger.llen("external") >= n // 2, 60, what="half the work"
    )
    store.flushall()
    # the fault fired: the store lost its keys, including the epoch marker
    assert not store.exists("reliable:epoch")
    for r in first:
        r.get(timeout=60)
    # every key again, after the flush: the completed records survive only in PostgreSQL
    second = [charge.delay(f"f{i}", i) for i in range(n)] + [external_effect.delay(i) for i in range(n)]
    outcomes = [r.get(timeout=60) for r in second]

    assert effects(engine) == {f"f{i}": 1 for i in range(n)}
    external_runs = [int(x.split(b":")[0]) for x in ledger.lrange("external", 0, -1)]
    assert sorted(external_runs) == list(range(n)), "a task without a database effect ran twice"
    assert outcomes[:n] == [{"order_id": f"f{i}", "charged": i} for i in range(n)]
    assert outcomes[n:] == [2 * i for i in range(n)]
    wait_until(lambda: store.exists("reliable:epoch"), 30, what="Redis to be re-warmed")


def test_redis_restart_between_runs_does_not_repeat_effects(
    workers, ledger, engine: Engine, private_redis: RedisServer, env: dict[str, str]
) -> None:
    w = workers("w1", env)
    for r in [external_effect.delay(i) for i in range(20)]:
        r.get(timeout=30)
    private_redis.stop()
    private_redis.start()
    assert not redis.Redis.from_url(private_redis.url).exists("reliable:epoch")  # the fault: an empty Redis
    again = [external_effect.delay(i) for i in range(20)]
    assert [r.get(timeout=60) for r in again] == [2 * i for i in range(20)]
    assert ledger.llen("external") == 20
    assert "re-warmed" in w.log()
