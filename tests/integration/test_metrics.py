"""Prometheus metrics scraped from a real prefork worker during a run with faults match the ledger.

Tasks run in pool children; the endpoint is served by the worker's parent. Faults:
duplicates sent while the originals run (deferred as key-in-progress, then replayed),
a burst over a 20/s rate limit, a bulkhead of 2 under 4 children, tasks dead-lettered,
and a pool child SIGKILLed between two phases (its counts must survive it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections import Counter
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import effects
from tests.harness import CELERY, ROOT, free_port, wait_until
from tests.worker_app import charge, limited, narrow, unauthorized

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(exposition: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return parse(reply.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def deliveries(ledger: redis.Redis) -> Counter[str]:
    """Deliveries per task name (every delivery, parked ones included)."""
    return Counter(d.decode().rsplit(":", 1)[0] for d in ledger.lrange("deliveries", 0, -1))


def dead_letters(engine: Engine) -> Counter[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_name, reason FROM reliable_dead_letters")).all()
    return Counter((name, reason) for name, reason in rows)


def pids(ledger: redis.Redis, name: str) -> set[int]:
    return {json.loads(x)["pid"] for x in ledger.lrange(name, 0, -1)}


def run_phase(ledger: redis.Redis, engine: Engine, orders: list[str], dupes: list[str], unauthorized_ns: range) -> None:
    """Send a workload with faults and wait until everything sent has finished."""
    limited_before, narrow_before = ledger.llen("limited"), ledger.llen("narrow")
    sent: list[Any] = [narrow.delay(i, 0.3) for i in range(8)]
    for o in orders:  # a duplicate right behind its original: found in progress, parked, then replayed
        sent += [charge.delay(o, 1, 0.3)] + ([charge.delay(o, 1, 0.3)] if o in dupes else [])
    sent += [charge.delay(o, 1, 0.3) for o in dupes if o not in orders]
    sent += [limited.delay(i) for i in range(50)]
    for n in unauthorized_ns:
        unauthorized.delay(n)
    for r in sent:
        r.get(timeout=60)
    wait_until(lambda: ledger.llen("limited") == limited_before + 50, 30, what="the limited tasks")
    wait_until(lambda: ledger.llen("narrow") == narrow_before + 8, 30, what="the narrow tasks")
    wanted = unauthorized_ns.stop
    wait_until(lambda: sum(dead_letters(engine).values()) == wanted, 30, what="the dead letters")


def test_scraped_metrics_match_the_ledger_under_prefork_with_faults(workers, ledger: redis.Redis, engine: Engine):
    port = free_port()
    worker = workers("w1", {"TEST_EXTRA_SETTINGS": json.dumps({"reliable_metrics_port": port})}, concurrency=4)
    orders = [f"m{i}" for i in range(10)]

    run_phase(ledger, engine, orders, orders[:6], range(0, 3))
    # Fault: SIGKILL a pool child that ran tasks; billiard forks a new one. Its counts stay.
    before = set(worker.children())
    victim = sorted(pids(ledger, "limited") & before)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(worker.children()) - before) == 1 and victim not in worker.children(), 20)
    run_phase(ledger, engine, [], orders[:4], range(3, 5))

    delivered = deliveries(ledger)
    bodies = {charge.name: sum(effects(engine).values()), limited.name: 100, narrow.name: 16}
    assert bodies[charge.name] == 10, "a duplicate ran its body"
    duplicates_sent = 6 + 4
    letters = dead_letters(engine)
    assert letters == {(unauthorized.name, "permanent"): 5}
    assert len(pids(ledger, "limited") | pids(ledger, "narrow")) >= 3, "the work did not spread over the children"

    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    def expected() -> Samples:
        in_progress = delivered[charge.name] - bodies[charge.name] - duplicates_sent
        rate_limited = delivered[limited.name] - bodies[limited.name]
        full = delivered[narrow.name] - bodies[narrow.name]
        return {
            key("reliable_deduplicated_total", source="idempotency", task=charge.name): duplicates_sent,
            key("reliable_deferred_total", reason="key-in-progress", task=charge.name): in_progress,
            key("reliable_deferred_total", reason="rate-limited", task=limited.name): rate_limited,
            key("reliable_rate_limited_total", reason="rate-limited", task=limited.name): rate_limited,
            key("reliable_deferred_total", reason="bulkhead-full", task=narrow.name): full,
            key("reliable_bulkhead_full_total", bulkhead="narrow", outcome="deferred", task=narrow.name): full,
            key("reliable_dead_lettered_total", reason="permanent", task=unauthorized.name): 5,
            key("reliable_dead_letters", reason="permanent"): 5,
            key("reliable_deferred_backlog", state="due"): 0,
            key("reliable_deferred_backlog", state="inflight"): 0,
            key("reliable_bulkhead_slots_in_use", bulkhead="narrow"): 0,
            key("reliable_bulkhead_slots", bulkhead="narrow"): 2,
            key("reliable_circuit_state", breaker="ledger-dep", state="closed"): 1,
            key("reliable_queue_depth", queue="reliable-tests"): 0,
        }

    last: dict[str, Any] = {}

    def matches() -> bool:
        got = scrape(port)
        last["got"] = got
        last["diff"] = {k: (got.get(k), v) for k, v in expected().items() if got.get(k, 0.0) != v}
        return not last["diff"]

    try:
        wait_until(matches, 15, interval=0.5, what="the scrape to match the ledger")  # gauges are cached 2 s
    except AssertionError:
        raise AssertionError(f"scraped != ledger (scraped, expected): {last['diff']}") from None
    got = last["got"]
    # The faults really happened.
    assert value(got, "reliable_deferred_total", reason="rate-limited", task=limited.name) > 0
    assert value(got, "reliable_deferred_total", reason="bulkhead-full", task=narrow.name) > 0
    assert value(got, "reliable_deferred_total", reason="key-in-progress", task=charge.name) > 0
    # Nothing else was decided, and every backend could be read.
    decided = {k for k, v in got.items() if k[0].startswith("reliable_") and k[0].endswith("_total") and v}
    assert decided <= set(expected()), decided - set(expected())
    assert ("reliable_outbox_pending", ()) in got
    print({k: v for k, v in got.items() if k in expected()})

    # The CLI prints the same gauges (the counters live in the workers).
    out = subprocess.run(
        [CELERY, "-A", "tests.worker_app", "reliable", "metrics", "--queue", "reliable-tests"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    printed = parse(out)
    assert value(printed, "reliable_dead_letters", reason="permanent") == 5
    assert value(printed, "reliable_bulkhead_slots", bulkhead="narrow") == 2
    assert value(printed, "reliable_queue_depth", queue="reliable-tests") == 0
    assert not [k for k in printed if k[0] == "reliable_deduplicated_total"]
