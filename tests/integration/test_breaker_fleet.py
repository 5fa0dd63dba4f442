"""Eight processes share one breaker in front of a dependency that goes down, then comes back.

The dependency is a Lua script on Redis db 3: each call appends to a ledger (never
deduplicated) what the caller's permit said (state and generation) and what the breaker's
state really was at that instant, read atomically in the same script, then fails while a
flag is set. The breaker runs on the Redis server's clock, as in production.

What the ledger must show:

- no call was admitted while the breaker was OPEN; the only calls that reach the
  dependency while it is OPEN were admitted before it opened (in flight, at most one per
  other process);
- each HALF_OPEN let exactly ``half_open_max_calls`` probes through, fleet-wide: the dead
  dependency answers after a timeout (as a real one does), so every HALF_OPEN sees the
  whole fleet asking while its first probe is out, and no more permits than that go out;
- once the dependency is back, the breaker closes and every process succeeds.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
import redis

from celery_reliable.breaker import CircuitBreaker, State
from celery_reliable.errors import CircuitOpen
from tests.harness import wait_until

URL = "redis://127.0.0.1:6379/3"
NAME = "fleet-dependency"
PROCESSES = 8
PROBES = 2
RECOVERY = 0.3
LEDGER, FLAG, PHASE, RESULTS = "fleet:ledger", "fleet:down", "fleet:phase", "fleet:results"
#: Seconds a call to the dead dependency takes to fail (its client's timeout).
DOWN_TIMEOUT = 0.1
#: Successes each process needs after the dependency is back.
SUCCESSES_AFTER = 5

#: KEYS: breaker hash, ledger, down flag. ARGV: the caller's "<process>:<state>:<generation>".
#: Appends "<caller>|<state code>:<generation>" as the breaker stands now; returns 1 when down.
DEPENDENCY = """
local h = redis.call('HMGET', KEYS[1], 'st', 'gen')
redis.call('RPUSH', KEYS[2], ARGV[1] .. '|' .. (h[1] or '0') .. ':' .. (h[2] or '0'))
return redis.call('EXISTS', KEYS[3])
"""


def breaker() -> CircuitBreaker:
    """The seed's breaker (50 % over 10 calls) with a short recovery and two probes."""
    return CircuitBreaker(
        NAME, url=URL, failure_rate_threshold=0.5, window=10, minimum_calls=10, recovery_timeout=RECOVERY,
        half_open_max_calls=PROBES, probe_lease=10,
    )  # fmt: skip


def caller(index: int) -> None:
    """One process: call the dependency through the breaker until it has succeeded after recovery."""
    r = redis.Redis.from_url(URL)  # created after the fork
    b = breaker()
    dependency = r.register_script(DEPENDENCY)
    stats: Counter[str] = Counter()
    while stats["successes_after"] < SUCCESSES_AFTER:
        phase = r.get(PHASE)
        if phase == b"abort":
            break
        try:
            with b as permit:
                stats["calls"] += 1
                tag = f"{index}:{permit.state.value}:{permit.generation}"
                if dependency(keys=[b.keys[0], LEDGER, FLAG], args=[tag]):
                    time.sleep(DOWN_TIMEOUT)
                    raise ConnectionError("dependency down")
            stats["successes"] += 1
            if phase == b"recovered":
                stats["successes_after"] += 1
        except CircuitOpen as exc:
            stats["refused"] += 1
            time.sleep(min(exc.retry_after, 0.02))
        except ConnectionError:
            stats["failures"] += 1
        time.sleep(0.002)
    r.hset(RESULTS, str(index), json.dumps(stats))


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def test_eight_processes_nothing_reaches_the_dependency_while_open(client: redis.Redis) -> None:
    assert breaker().reset() is None  # the parent's own client exists before the fork; children must not share it
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=caller, args=(i,), daemon=True) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        wait_until(lambda: client.llen(LEDGER) >= 40, 10, 0.05, "the processes to call the dependency")
        before_down = client.llen(LEDGER)
        client.set(FLAG, 1)  # the dependency goes down
        wait_until(lambda: client.hget(breaker().keys[0], "st") == b"1", 10, 0.01, "the breaker to open")
        time.sleep(2.0)  # several OPEN -> HALF_OPEN -> OPEN cycles against the dead dependency
        down_calls = client.llen(LEDGER) - before_down
        client.delete(FLAG)  # it comes back
        client.set(PHASE, "recovered")
        for p in procs:
            p.join(15)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    finally:
        client.set(PHASE, "abort")
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()

    entries = [(e.decode() if isinstance(e, bytes) else e).split("|") for e in client.lrange(LEDGER, 0, -1)]
    calls = [(tag.split(":"), observed.split(":")) for tag, observed in entries]
    in_flight_while_open: Counter[int] = Counter()
    probes: Counter[int] = Counter()
    admitted_in: Counter[str] = Counter()
    for (_index, state, generation), (code, observed_gen) in calls:
        admitted_in[state] += 1
        if state == State.HALF_OPEN.value:
            probes[int(generation)] += 1
        if code == "1":  # the breaker was OPEN when this call reached the dependency
            assert int(generation) < int(observed_gen), "a call admitted while OPEN reached the dependency"
            in_flight_while_open[int(observed_gen)] += 1
    results = {int(k): json.loads(v) for k, v in client.hgetall(RESULTS).items()}

    # the fault really happened: the breaker opened several times and refused many calls
    opened = {int(g) for (_, (code, g)) in calls if code == "1"} | {g + 1 for g in probes}
    assert len(probes) >= 2, f"expected several HALF_OPEN episodes, got {dict(probes)}"
    assert sum(r.get("refused", 0) for r in results.values()) > 50
    assert sum(r.get("failures", 0) for r in results.values()) >= 5
    # no permit while OPEN; exactly PROBES probes per HALF_OPEN; a few calls in flight at a trip
    assert admitted_in.keys() <= {State.CLOSED.value, State.HALF_OPEN.value}
    assert set(probes.values()) == {PROBES}, dict(probes)
    assert all(n <= PROCESSES - 1 for n in in_flight_while_open.values()), dict(in_flight_while_open)
    # it recovered: closed, and every process succeeded again
    assert breaker().state().state is State.CLOSED
    assert sorted(results) == list(range(PROCESSES))
    assert all(r["successes_after"] == SUCCESSES_AFTER for r in results.values())
    by_state: defaultdict[str, int] = defaultdict(int, admitted_in)
    print(  # the numbers behind the claims, for the report (pytest -s)
        f"calls={len(calls)} (while down: {down_calls}, admitted CLOSED: {by_state['closed']}) "
        f"probes={dict(probes)} in_flight_at_open={dict(in_flight_while_open)} opened={len(opened)} "
        f"refused={sum(r.get('refused', 0) for r in results.values())}"
    )
