"""Same-key storm: many deliveries of each key across two prefork workers."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import effects, stored_results
from tests.harness import wait_until
from tests.worker_app import charge

COPIES = 20


@pytest.mark.parametrize("keys", [pytest.param(100, id="100"), pytest.param(400, id="400", marks=pytest.mark.soak)])
def test_same_key_storm_gives_one_effect_and_one_result_per_key(workers, ledger, engine: Engine, keys: int) -> None:
    workers("w1", {"TEST_CLAIM_LEASE": "5", "TEST_BUSY_DELAY": "0.1"})
    workers("w2", {"TEST_CLAIM_LEASE": "5", "TEST_BUSY_DELAY": "0.1"})
    with charge.app.producer_or_acquire() as producer:
        results = [charge.apply_async((f"k{k}", k), producer=producer) for k in range(keys) for _ in range(COPIES)]
    wait_until(lambda: all(r.ready() for r in results), 300, interval=0.5, what="the storm to drain")

    # the fault: every key was delivered COPIES times (deliveries are counted, never deduplicated)
    assert ledger.llen("deliveries") >= keys * COPIES
    assert effects(engine) == {f"k{k}": 1 for k in range(keys)}
    stored = stored_results(engine)
    assert len(stored) == keys and all(v is not None for v in stored.values())
    assert {r.state for r in results} == {"SUCCESS"}
    assert all(
        r.result == {"order_id": f"k{k}", "charged": k}
        for r, k in zip(results, (k for k in range(keys) for _ in range(COPIES)), strict=True)
    )
