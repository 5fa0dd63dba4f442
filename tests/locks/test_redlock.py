"""Redlock against real, private redis-server processes: quorum, faults, fencing tokens, leases."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_reliable.errors import ConfigurationError, LockError, LockLost, LockNotAcquired, QuorumUnavailable
from celery_reliable.locks import redlock
from celery_reliable.locks.redlock import Redlock
from celery_reliable.scripts import script_for
from tests.harness import RedisServer, wait_until

N = 5


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Five private redis-servers for the whole module, stopped at the end."""
    started: list[RedisServer] = []
    try:
        for i in range(N):
            started.append(RedisServer(tmp_path_factory.mktemp(f"redlock{i}")))
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture()
def nodes(servers: list[RedisServer]) -> Iterator[list[redis.Redis]]:
    """One fail-fast client per server; every server is running when the test starts."""
    for server in servers:
        if server.proc is None:
            server.start()
    clients = [fast_client(s) for s in servers]
    yield clients
    for client in clients:
        client.close()


def fast_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 1))


def down(server: RedisServer) -> None:
    """Stop a server and prove it is gone."""
    server.stop()
    probe = redis.Redis(port=server.port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        probe.ping()


def increasing(values: Sequence[int | None]) -> bool:
    return None not in values and all(a < b for a, b in itertools.pairwise(values))  # type: ignore[operator]


def owners(clients: list[redis.Redis], lock: Redlock) -> list[object]:
    return [c.get(lock.key) for c in clients]


def counters(clients: list[redis.Redis], lock: Redlock) -> list[int]:
    return [int(c.get(lock.keys[1]) or 0) for c in clients]


@pytest.mark.parametrize("n", [3, 5])
def test_acquire_release(nodes: list[redis.Redis], n: int) -> None:
    clients = nodes[:n]
    lock = Redlock(clients, f"basic-{n}", ttl=5, renew=False)
    assert lock.quorum == n // 2 + 1 and "not held" in repr(lock)
    assert lock.acquire()
    assert lock.held() and isinstance(lock.token, int) and lock.owner is not None
    assert lock.validity is not None and 4.5 < lock.validity < 5
    assert owners(clients, lock) == [lock.owner.encode()] * n
    assert min(c.pttl(lock.key) for c in clients) > 4000
    assert lock.locked() and f"token={lock.token}" in repr(lock)
    assert lock.release()
    assert owners(clients, lock) == [None] * n and not lock.held() and lock.token is None
    with lock as held:
        assert held.held()
    assert not lock.locked()


@pytest.mark.parametrize("n", [3, 5])
def test_mutual_exclusion(nodes: list[redis.Redis], n: int) -> None:
    clients = nodes[:n]
    a = Redlock(clients, f"mutex-{n}", ttl=5, renew=False)
    b = Redlock(clients, f"mutex-{n}", ttl=5, renew=False, retry_delay=0.05)
    assert a.acquire()
    assert not b.acquire(blocking=False)
    started = time.monotonic()
    assert not b.acquire(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    with pytest.raises(LockNotAcquired) as info, Redlock(clients, f"mutex-{n}", blocking=False):
        pass
    assert info.value.retry_after is not None and 3 < info.value.retry_after <= 5
    with pytest.raises(LockError, match="not reentrant"):
        a.acquire()
    assert a.release()
    assert b.acquire(blocking=False) and b.release()


@pytest.mark.parametrize("n", [3, 5])
def test_threads_never_overlap_and_tokens_increase(nodes: list[redis.Redis], n: int) -> None:
    clients = nodes[:n]
    inside, overlaps, tokens = [0], [0], []
    guard = threading.Lock()

    def work() -> None:
        lock = Redlock(clients, f"threads-{n}", ttl=5, renew=False, retry_delay=0.005, timeout=20)
        for _ in range(8):
            with lock:
                with guard:
                    inside[0] += 1
                    overlaps[0] += inside[0] > 1
                    tokens.append(lock.token)
                time.sleep(0.002)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps[0] == 0 and len(tokens) == 32
    assert increasing(tokens)  # in the order they held the lock


@pytest.mark.parametrize("n", [3, 5])
def test_tokens_strictly_increase(nodes: list[redis.Redis], n: int) -> None:
    seen = []
    for _ in range(20):
        with Redlock(nodes[:n], f"tokens-{n}", ttl=5, renew=False) as lock:
            seen.append(lock.token)
    assert increasing(seen)


def test_two_of_five_down_still_grants(nodes: list[redis.Redis], servers: list[RedisServer]) -> None:
    lock = Redlock(nodes, "two-down", ttl=5, renew=False)
    with lock:
        before = lock.token
    down(servers[0])
    down(servers[3])
    assert lock.acquire(timeout=2)
    assert lock.token is not None and before is not None and lock.token > before
    assert [o is not None for o in owners([nodes[i] for i in (1, 2, 4)], lock)] == [True] * 3
    assert lock.release()


def test_three_of_five_down_fails_fast(nodes: list[redis.Redis], servers: list[RedisServer]) -> None:
    for i in (0, 2, 4):
        down(servers[i])
    lock = Redlock(nodes, "three-down", ttl=5, timeout=20)
    started = time.monotonic()
    with pytest.raises(QuorumUnavailable) as info:
        lock.acquire()
    assert time.monotonic() - started < 2, "must fail at once, not retry until the 20 s timeout"
    assert (info.value.reachable, info.value.needed) == (2, 3)
    assert nodes[1].get(lock.key) is None and nodes[3].get(lock.key) is None  # the attempt was undone
    with pytest.raises(QuorumUnavailable):
        lock.acquire(blocking=False)
    with pytest.raises(QuorumUnavailable), lock:
        pass
    assert lock.owner is None


def test_even_number_of_nodes(nodes: list[redis.Redis], servers: list[RedisServer]) -> None:
    lock = Redlock(nodes[:4], "even", ttl=5, renew=False)
    assert lock.quorum == 3
    down(servers[0])
    with lock:
        pass
    down(servers[1])
    with pytest.raises(QuorumUnavailable, match="only 2 node"):
        lock.acquire()


def test_node_restarted_empty_keeps_tokens_increasing(nodes: list[redis.Redis], servers: list[RedisServer]) -> None:
    clients = nodes[:3]
    seen = []
    for restart in ([0], [1, 2], [0, 1, 2]):  # one node, then a majority, then every node lost its data
        with Redlock(clients, "restarts", ttl=5, renew=False) as lock:
            seen.append(lock.token)
        for i in restart:
            servers[i].stop()
            servers[i].start()
        assert all(c.get(lock.keys[1]) is None for c in (clients[i] for i in restart))
    with Redlock(clients, "restarts", ttl=5, renew=False) as lock:
        seen.append(lock.token)
    assert increasing(seen)


@pytest.mark.parametrize("proposal", [True, False], ids=["proposal", "node-clocks"])
def test_token_order_when_counters_diverge(
    nodes: list[redis.Redis], servers: list[RedisServer], monkeypatch: pytest.MonkeyPatch, proposal: bool
) -> None:
    if not proposal:  # proposals in the past are ignored: every node returns its own token, the raise round runs
        monkeypatch.setattr(redlock, "PROPOSAL_LEAD_US", -(10**9))
    name = f"diverge-{proposal}"
    seen: list[int] = []
    real_run, rounds = Redlock._run, []

    def spy(self: Redlock, script: str, which: object, args: list[object]) -> list[object]:
        rounds.append(script)
        return real_run(self, script, which, args)  # type: ignore[arg-type]

    monkeypatch.setattr(Redlock, "_run", spy)

    def hold(alive: list[int]) -> Redlock:
        lock = Redlock(nodes, name, ttl=5, renew=False)
        assert lock.acquire(timeout=2) and lock.token is not None
        seen.append(lock.token)
        stored = counters([nodes[i] for i in alive], lock)
        assert sum(n >= lock.token for n in stored) >= 3, f"a quorum must store >= token: {stored} {lock.token}"
        assert lock.release()
        return lock

    down(servers[3])
    down(servers[4])
    lock = hold([0, 1, 2])
    servers[3].start()
    servers[4].start()
    down(servers[0])
    hold([1, 2, 3, 4])
    # One node's counter far ahead of the others' (left by a hold granted only there, say).
    nodes[4].set(lock.keys[1], str(seen[-1] + 10**9))
    hold([1, 2, 3, 4])
    assert seen[-1] > seen[-2] + 10**9 - 1
    servers[0].start()
    down(servers[4])  # the node holding the far-ahead counter goes away: the raised quorum remembers it
    hold([0, 1, 2, 3])
    assert increasing(seen), seen
    # Proposals: only the far-ahead counter needs the raise round. Node clocks: every hold but the last
    # does (there three nodes share the raised counter, so they agree on its successor).
    assert rounds.count("redlock_raise") == (1 if proposal else 3)


def test_scripts_directly(nodes: list[redis.Redis]) -> None:
    client = nodes[0]
    key, fence = redlock.redis_key("reliable", "scripts"), redlock.redis_key("reliable", "scripts") + ":fence"
    acquire, raise_ = script_for(client, "redlock_acquire"), script_for(client, "redlock_raise")
    now_us = int(time.time() * 1e6)
    far = now_us + 3600 * 10**6  # an hour ahead: ignored
    status, token = acquire(keys=[key, fence], args=["me", 5000, 60000, far, redlock.PROPOSAL_MAX_AHEAD_US])
    assert status == 1 and abs(int(token) - now_us) < 5 * 10**6
    assert acquire(keys=[key, fence], args=["you", 5000, 60000, 0, 0])[0] == 0
    assert int(raise_(keys=[key, fence], args=["you", int(token) + 100, 60000])) == 0  # not ours: untouched
    assert int(client.get(fence) or 0) == int(token)
    assert int(raise_(keys=[key, fence], args=["me", int(token) + 100, 60000])) == int(token) + 100
    assert int(raise_(keys=[key, fence], args=["me", 5, 60000])) == int(token) + 100  # never lowered
    client.delete(key)
    near = now_us + 2 * 10**6
    assert int(acquire(keys=[key, fence], args=["me", 5000, 60000, near, 10**7])[1]) == max(near, int(token) + 101)


def test_release_after_expiry_leaves_new_owner_alone(nodes: list[redis.Redis]) -> None:
    a = Redlock(nodes[:3], "expiry", ttl=0.3, renew=False)
    b = Redlock(nodes[:3], "expiry", ttl=5, renew=False)
    assert a.acquire()
    time.sleep(0.4)
    assert not a.held()
    with pytest.raises(LockLost):
        a.check()
    assert b.acquire(blocking=False)
    assert a.token is not None and b.token is not None and b.token > a.token
    assert a.release() is False and a.lost.is_set()
    assert b.owner is not None and owners(nodes[:3], b) == [b.owner.encode()] * 3
    assert b.release()


def test_heartbeat_keeps_the_lock_for_several_ttls(nodes: list[redis.Redis]) -> None:
    lock = Redlock(nodes, "heartbeat", ttl=0.5)
    other = Redlock(nodes, "heartbeat", ttl=0.5)
    with lock:
        for _ in range(4):
            time.sleep(0.4)
            lock.check()
            assert not other.acquire(blocking=False)
        assert lock.held() and lock.valid_until > time.monotonic()
    assert not lock.lost.is_set() and other.acquire(blocking=False) and other.release()


def test_heartbeat_notices_a_lost_majority(nodes: list[redis.Redis]) -> None:
    lock = Redlock(nodes, "heartbeat-lost", ttl=0.6)
    with pytest.raises(LockLost), lock:
        for c in nodes[:3]:
            c.delete(lock.key)
        wait_until(lock.lost.is_set, 3, 0.02, "the heartbeat to notice the loss")
        with pytest.raises(LockLost):
            lock.check()
        assert not lock.held()


def test_without_renewal_the_lease_runs_out(nodes: list[redis.Redis]) -> None:
    lock = Redlock(nodes[:3], "no-renew", ttl=0.3, renew=False)
    assert lock.acquire()
    time.sleep(0.4)
    assert lock.release() is False
    with pytest.raises(LockLost, match="ran out"), lock:
        time.sleep(0.4)
    with pytest.raises(ValueError), lock:  # another exception in flight is not replaced
        time.sleep(0.4)
        raise ValueError("body failed")


def test_extend(nodes: list[redis.Redis]) -> None:
    lock = Redlock(nodes, "extend", ttl=1, renew=False)
    with pytest.raises(LockError, match="not held"):
        lock.extend()
    assert lock.acquire()
    lock.extend(3)
    assert lock.validity is not None and 2.5 < lock.validity < 3
    assert all(2000 < c.pttl(lock.key) <= 3000 for c in nodes)
    for c in nodes[:3]:
        c.delete(lock.key)
    with pytest.raises(LockLost, match="majority"):
        lock.extend()
    assert lock.lost.is_set() and lock.release() is False
    with pytest.raises(LockError, match="does not hold"):
        lock.release()


def test_from_urls(servers: list[RedisServer], nodes: list[redis.Redis]) -> None:
    with Redlock.from_urls([s.url for s in servers[:3]], "urls", ttl=2, renew=False) as lock:
        assert lock.quorum == 2 and lock.token


@pytest.mark.parametrize(
    ("make", "param", "text"),
    [
        (lambda c: Redlock([], "x"), "clients", "at least one"),
        (lambda c: Redlock(c[0], "x"), "clients", "list or tuple"),
        (lambda c: Redlock([c[0], object()], "x"), "clients", r"clients\[1\] must be a redis.Redis"),
        (lambda c: Redlock([redis.asyncio.Redis()], "x"), "clients", "asyncio"),
        (lambda c: Redlock([c[0], c[1], c[0]], "x"), "clients", "same server"),
        (lambda c: Redlock(c[:3], "x", ttl=0), "ttl", "positive"),
        (lambda c: Redlock(c[:3], "x", ttl=-1), "ttl", "positive"),
        (lambda c: Redlock(c[:3], "x", ttl="5"), "ttl", "seconds"),
        (lambda c: Redlock(c[:3], "x", ttl=float("nan")), "ttl", "positive"),
        (lambda c: Redlock(c[:3], "x", ttl=0.002), "ttl", "no validity"),
        (lambda c: Redlock(c[:3], ""), "name", "empty"),
        (lambda c: Redlock(c[:3], 42), "name", "must be a str"),
        (lambda c: Redlock(c[:3], "a\x00b"), "name", "NUL"),
        (lambda c: Redlock(c[:3], "x", timeout=-1), "timeout", "zero or more"),
        (lambda c: Redlock(c[:3], "x", retry_delay=None), "retry_delay", "None"),
        (lambda c: Redlock(c[:3], "x", drift_factor=1.5), "drift_factor", r"\[0, 1\)"),
        (lambda c: Redlock.from_urls("redis://x", "x"), "urls", "list"),
    ],
)
def test_bad_input(nodes: list[redis.Redis], make: object, param: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text) as info:
        make(nodes)  # type: ignore[operator]
    assert info.value.name == param and str(info.value).startswith(f"{param}: ")


def test_no_grant_without_a_quorum_of_raised_counters(
    nodes: list[redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = Redlock(nodes[:3], "raise-fails", ttl=5, renew=False)
    nodes[0].set(lock.keys[1], str(int(time.time() * 1e6) + 5 * 10**9))  # far ahead on one node
    real_run, rounds = Redlock._run, []

    def failing_raise(self: Redlock, script: str, which: object, args: list[object]) -> list[object]:
        rounds.append(script)
        if script == "redlock_raise":
            return [redis.ConnectionError("cut") for _ in which]  # type: ignore[attr-defined]
        return real_run(self, script, which, args)  # type: ignore[arg-type]

    monkeypatch.setattr(Redlock, "_run", failing_raise)
    assert not lock.acquire(blocking=False)
    assert rounds == ["redlock_acquire", "redlock_raise", "lease_release"]
    assert owners(nodes[:3], lock) == [None] * 3  # undone everywhere
    monkeypatch.setattr(Redlock, "_run", real_run)
    assert lock.acquire(blocking=False) and lock.token is not None and lock.token > 5 * 10**9
    assert lock.release()


def test_no_grant_when_the_nodes_answer_too_slowly(
    nodes: list[redis.Redis], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lock = Redlock(nodes[:3], "validity", ttl=0.05, renew=False)
    real_run = Redlock._run

    def slow(self: Redlock, script: str, which: object, args: list[object]) -> list[object]:
        if script == "redlock_acquire":
            time.sleep(0.06)  # longer than the lease: no validity left
        return real_run(self, script, which, args)  # type: ignore[arg-type]

    monkeypatch.setattr(Redlock, "_run", slow)
    assert not lock.acquire(blocking=False)
    assert owners(nodes[:3], lock) == [None] * 3
    assert "leaves no validity" in caplog.text and "from_urls" in caplog.text
