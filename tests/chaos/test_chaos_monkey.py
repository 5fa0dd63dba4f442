"""Random SIGKILLs of worker children while a duplicated workload runs."""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import effects
from tests.harness import wait_until
from tests.worker_app import charge

ENV = {"TEST_CLAIM_LEASE": "1.5", "TEST_BUSY_DELAY": "0.2", "TEST_VISIBILITY_TIMEOUT": "30"}


def _monkey(worker_list, stop: threading.Event, every: float, kills: list[int]) -> None:
    rnd = random.Random(7)
    while not stop.wait(every):
        children = [pid for w in worker_list for pid in w.children()]
        if not children:
            continue
        victim = rnd.choice(children)
        try:
            os.kill(victim, signal.SIGKILL)
            kills.append(victim)
        except ProcessLookupError:
            pass


def _run(workers, engine: Engine, keys: int, copies: int, every: float, timeout: float) -> list[int]:
    ws = [workers("w1", ENV), workers("w2", ENV)]
    with charge.app.producer_or_acquire() as producer:
        results = [
            charge.apply_async((f"m{k}", k, 0.02), producer=producer) for _ in range(copies) for k in range(keys)
        ]
    stop, kills = threading.Event(), []
    monkey = threading.Thread(target=_monkey, args=(ws, stop, every, kills), daemon=True)
    monkey.start()
    try:
        wait_until(lambda: all(r.ready() for r in results), timeout, interval=0.5, what="the workload under kills")
    finally:
        stop.set()
        monkey.join()
    assert {r.state for r in results} == {"SUCCESS"}
    assert effects(engine) == {f"m{k}": 1 for k in range(keys)}
    return kills


def test_random_child_kills_never_double_or_lose_an_effect(workers, engine: Engine) -> None:
    kills = _run(workers, engine, keys=150, copies=3, every=0.7, timeout=240)
    assert len(kills) >= 3, "the monkey never killed anything"


@pytest.mark.soak
def test_soak_random_child_kills(workers, engine: Engine) -> None:
    kills = _run(workers, engine, keys=2000, copies=3, every=0.3, timeout=1500)
    print(f"soak: {len(kills)} children killed")
    assert len(kills) >= 50
