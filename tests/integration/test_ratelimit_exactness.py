"""Limits hold under contention across processes, and wrong client clocks change nothing.

Sixteen threads in four processes hammer one key per limiter for four seconds; one process
runs under ``faketime`` with its clock 30 s ahead. Admissions are checked on the times the
scripts recorded on the Redis server's clock, the clock that made the decisions: the
clients' receive times would add their own scheduling delays (and one of them is 30 s off).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_reliable.ratelimit import GCRALimiter, RateLimiter, SlidingWindowLimiter, TokenBucketLimiter
from tests.harness import ROOT

URL = "redis://127.0.0.1:6379/8"
SECOND_US = 1_000_000
HAMMER_SECONDS = 4.0
FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(FAKETIME is None, reason="faketime is not installed (apt-get install faketime)")


def hammer_limiters(client: Any) -> dict[str, RateLimiter[Any]]:
    """The limiters under test, about 100 admissions per second each."""
    return {
        "sliding_log": SlidingWindowLimiter(client, 100, 1.0, name="x-log"),
        "gcra": GCRALimiter(client, 100, 1.0, burst=1, name="x-gcra"),
        "gcra_burst": GCRALimiter(client, 80, 1.0, burst=20, name="x-gcra-burst"),
        "token_bucket": TokenBucketLimiter(client, capacity=50, refill_rate=100, name="x-bucket"),
        "sliding_counter": SlidingWindowLimiter(client, 100, 1.0, exact=False, name="x-counter"),
    }


def hammer(threads: int = 4) -> None:
    """Child process: wait for the start, hammer the key ``hot`` for HAMMER_SECONDS, print admissions as JSON."""
    client = redis.Redis.from_url(URL)
    limiters = hammer_limiters(client)
    admitted: dict[str, list[int]] = {name: [] for name in limiters}
    decisions = [0]
    lock = threading.Lock()

    def run() -> None:
        mine: dict[str, list[int]] = {name: [] for name in limiters}
        count = 0
        deadline = time.monotonic() + HAMMER_SECONDS
        while time.monotonic() < deadline:
            for name, limiter in limiters.items():
                decision = limiter.is_allowed("hot")
                count += 1
                if decision:
                    mine[name].append(round(decision.at * SECOND_US))
        with lock:
            decisions[0] += count
            for name, times in mine.items():
                admitted[name].extend(times)

    server_s, server_us = client.time()
    offset = time.time() - (server_s + server_us / SECOND_US)
    client.rpush("x:ready", os.getpid())
    client.blpop(["x:go"], timeout=60)
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"offset": offset, "decisions": decisions[0], "admitted": admitted}))


def spawn(code: str, clock: str | None = None) -> subprocess.Popen[str]:
    """Run ``code`` in a new Python process, under ``faketime -f <clock>`` when given."""
    cmd = [sys.executable, "-c", code]
    if clock is not None:
        assert FAKETIME is not None
        cmd = [FAKETIME, "-f", clock, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> Any:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def most_in_any_window(times: list[int], window_us: int) -> int:
    """The most admissions in any half-open window ``[t, t + window)`` (the busiest starts at an admission)."""
    return max((bisect_left(times, t + window_us) - i for i, t in enumerate(times)), default=0)


def worst_bucket_excess(times: list[int], capacity: int, rate: float) -> float:
    """max over i <= j of admissions in [t_i, t_j] - (capacity + rate * (t_j - t_i)); must stay <= 0."""
    worst = float("-inf")
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - capacity - rate * (times[j] - start) / SECOND_US)
    return worst


@needs_faketime
def test_no_limit_is_exceeded_under_contention_across_processes(client: redis.Redis) -> None:
    code = "from tests.integration.test_ratelimit_exactness import hammer; hammer()"
    procs = [spawn(code), spawn(code), spawn(code), spawn(code, clock="+30s")]
    ready = [client.blpop(["x:ready"], timeout=60) for _ in procs]
    assert all(ready), "a hammer process did not start"
    client.rpush("x:go", *["go"] * len(procs))
    results = [finish(p) for p in procs]

    offsets = [r["offset"] for r in results]
    assert all(abs(o) < 2 for o in offsets[:3]) and 28 < offsets[3] < 32, f"faketime did not skew the clock: {offsets}"
    admitted = {name: sorted(t for r in results for t in r["admitted"][name]) for name in results[0]["admitted"]}
    decisions = sum(r["decisions"] for r in results)
    span_s = (max(max(t) for t in admitted.values()) - min(min(t) for t in admitted.values())) / SECOND_US
    assert span_s > HAMMER_SECONDS - 1 and decisions > 3 * sum(map(len, admitted.values())), "not saturated"
    assert all(results[3]["admitted"][name] for name in admitted), "the skewed process was never admitted"

    # Exact algorithms: never more than the limit in any window of one period.
    assert most_in_any_window(admitted["sliding_log"], SECOND_US) <= 100
    assert most_in_any_window(admitted["gcra"], SECOND_US) <= 100
    assert most_in_any_window(admitted["gcra_burst"], SECOND_US) <= 80 + 20 - 1
    # Token bucket: never more than capacity + rate x elapsed.
    assert worst_bucket_excess(admitted["token_bucket"], capacity=50, rate=100) <= 1e-6
    # Sliding counter: at most the limit per fixed window, at most twice the limit in a sliding one.
    counter = admitted["sliding_counter"]
    assert max(sum(1 for t in counter if t // SECOND_US == w) for w in {t // SECOND_US for t in counter}) <= 100
    assert most_in_any_window(counter, SECOND_US) <= 200
    # And they admit what they should: about 100 per second.
    for name in ("sliding_log", "sliding_counter"):
        assert len(admitted[name]) >= 0.85 * 100 * span_s, (name, len(admitted[name]), span_s)
    assert len(admitted["token_bucket"]) >= 50 + 0.85 * 100 * span_s
    # With burst=1 a request polled late earns no credit for the delay, so GCRA runs a little slower.
    assert len(admitted["gcra"]) >= 0.6 * 100 * span_s and len(admitted["gcra_burst"]) >= 20 + 0.6 * 80 * span_s


def clock_limiters(client: Any) -> dict[str, RateLimiter[Any]]:
    """Limiters for the clock test: ten per minute (an hour for the windows, far from a boundary)."""
    return {
        "token_bucket": TokenBucketLimiter(client, capacity=10, refill_rate=10 / 60, name="c-bucket"),
        "gcra": GCRALimiter(client, 10, 60, burst=10, name="c-gcra"),
        "sliding_log": SlidingWindowLimiter(client, 10, 3600, name="c-log"),
        "sliding_counter": SlidingWindowLimiter(client, 10, 3600, exact=False, name="c-counter"),
    }


def decide(key: str, calls: int) -> dict[str, Any]:
    """``calls`` decisions on ``key`` by each clock-test limiter: ``{name: [[allowed, remaining], ...]}``."""
    client = redis.Redis.from_url(URL)
    server_s, server_us = client.time()
    seen = {
        name: [[d.allowed, d.remaining] for d in (limiter.is_allowed(key) for _ in range(calls))]
        for name, limiter in clock_limiters(client).items()
    }
    client.close()
    return {"offset": time.time() - server_s - server_us / SECOND_US, "decisions": seen}


@needs_faketime
@pytest.mark.parametrize("clock", ["+30s", "-30s"])
def test_a_client_with_a_wrong_clock_gets_the_same_decisions(client: redis.Redis, clock: str) -> None:
    seconds, _ = client.time()
    if seconds % 3600 > 3590:  # the windows' fixed boundary is near: let it pass
        time.sleep(3600 - seconds % 3600 + 0.5)
    reference = decide("reference", 15)["decisions"]  # one process, one clock, all 15 calls
    first = decide("shared", 4)["decisions"]
    code = "import json; from tests.integration.test_ratelimit_exactness import decide; "
    code += "print(json.dumps(decide('shared', 10)))"
    skewed = finish(spawn(code, clock))
    last = decide("shared", 1)["decisions"]

    assert abs(skewed["offset"] - float(clock[:-1])) < 2, f"faketime did not skew the clock: {skewed['offset']}"
    for name, calls in reference.items():
        assert [allowed for allowed, _ in calls] == [True] * 10 + [False] * 5
        assert first[name] == calls[:4] and skewed["decisions"][name] == calls[4:14] and last[name] == calls[14:]
