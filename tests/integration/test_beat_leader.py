"""A highly available beat: one leader sends, a standby takes over, no tick is sent twice.

The scripts and the scheduler run in-process against Redis db 9 (keys under a fresh
prefix per test); the proof runs two real ``celery beat`` processes of tests/beat_app.py
on a private redis-server, and stops and kills them by process group.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable import clients
from celery_reliable.beat_leader import ENTRY_HEADER, TICK_HEADER, LeaderScheduler, from_ms, to_ms
from celery_reliable.scripts import script_for
from tests.harness import CELERY, ROOT, RedisServer, _killpg, _stop_group, wait_until

DB9 = "redis://127.0.0.1:6379/9"
LEASE = 3.0  # tests/beat_app.py's lease, seconds


@pytest.fixture()
def r9() -> Iterator[tuple[redis.Redis, str]]:
    """Redis db 9 and a fresh key prefix; the prefix's keys are deleted afterwards."""
    client = redis.Redis.from_url(DB9)
    prefix = f"beat-test-{uuid.uuid4().hex[:8]}"
    yield client, prefix
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


# -- the two scripts ----------------------------------------------------------------------


def test_lease_script_takes_extends_and_refuses(r9: tuple[redis.Redis, str]) -> None:
    client, prefix = r9
    lease = script_for(client, "beat_lease")
    key = f"{prefix}:{{beat}}:leader"
    assert lease(keys=[key], args=["a", 1000]) == [1, 1000, b"a"]
    assert lease(keys=[key], args=["a", 5000]) == [2, 5000, b"a"]
    code, ttl, holder = lease(keys=[key], args=["b", 1000])
    assert (code, holder) == (0, b"a") and 4000 < ttl <= 5000
    assert script_for(client, "lease_release")(keys=[key], args=["b"]) == 0  # not b's to give back
    assert script_for(client, "lease_release")(keys=[key], args=["a"]) == 1
    assert lease(keys=[key], args=["b", 200])[0] == 1
    time.sleep(0.3)
    assert lease(keys=[key], args=["a", 1000])[0] == 1  # b's lease ran out: a takes a new term


def test_claim_script_checks_the_owner_and_that_the_tick_is_newer(r9: tuple[redis.Redis, str]) -> None:
    client, prefix = r9
    claim = script_for(client, "beat_claim")
    keys = [f"{prefix}:{{beat}}:leader", f"{prefix}:{{beat}}:last-run"]
    assert claim(keys=keys, args=["a", "job", 100]) == [-1, None]  # nobody leads
    client.set(keys[0], "b", px=5000)
    assert claim(keys=keys, args=["a", "job", 100]) == [-1, b"b"]
    client.set(keys[0], "a", px=5000)
    assert claim(keys=keys, args=["a", "job", 100]) == [1, 100]
    assert claim(keys=keys, args=["a", "job", 100]) == [0, 100]  # the same tick twice
    assert claim(keys=keys, args=["a", "job", 99]) == [0, 100]  # an older tick
    assert claim(keys=keys, args=["a", "other", 50]) == [1, 50]  # ticks are per entry
    assert claim(keys=keys, args=["a", "job", 101]) == [1, 101]
    assert client.hgetall(keys[1]) == {b"job": b"101", b"other": b"50"}


# -- the scheduler, in-process ------------------------------------------------------------


class Recording(LeaderScheduler):
    """A LeaderScheduler that records what it would publish instead of publishing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, int]] = []
        super().__init__(*args, **kwargs)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        headers = options["headers"]
        self.sent.append((headers[ENTRY_HEADER], headers[TICK_HEADER]))
        return None


def make_app(prefix: str, url: str = DB9, every: float = 0.2) -> Celery:
    app = Celery("beat-inproc", broker="memory://", set_as_current=False)
    app.conf.reliable_redis_url = url
    app.conf.reliable_key_prefix = prefix
    app.conf.reliable_beat_lease = 1.0
    app.conf.beat_schedule = {"job": {"task": "inproc.job", "schedule": every}}
    return app


def drive(schedulers: list[Recording], seconds: float) -> None:
    """Run the schedulers' loops side by side, each sleeping as long as its tick asks."""
    wake = dict.fromkeys(map(id, schedulers), 0.0)
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        for s in schedulers:
            if now >= wake[id(s)]:
                wake[id(s)] = now + s.tick()
        time.sleep(0.01)


def assert_each_tick_once(*schedulers: Recording, every_ms: int = 200) -> list[int]:
    ticks = sorted(t for s in schedulers for _, t in s.sent)
    assert ticks, "nothing was sent"
    assert max(Counter(ticks).values()) == 1, f"a tick was sent twice: {Counter(ticks).most_common(3)}"
    assert all((t - ticks[0]) % every_ms == 0 for t in ticks), f"ticks off the entry's grid: {ticks}"
    return ticks


def test_one_leader_sends_and_a_paused_leader_does_not_resend(r9: tuple[redis.Redis, str]) -> None:
    _, prefix = r9
    app = make_app(prefix)
    a, b = Recording(app), Recording(app)
    drive([a, b], 1.2)
    assert a.is_leader and not b.is_leader
    assert len(a.sent) >= 3 and b.sent == [] and b.claims["sent"] == 0
    assert_each_tick_once(a)

    drive([b], 1.5)  # a is "paused" past its 1 s lease
    assert b.is_leader and b.sent, "the standby did not take over"
    assert min(t for _, t in b.sent) > max(t for _, t in a.sent)
    before = len(a.sent)
    drive([a, b], 0.8)  # a wakes up
    assert not a.is_leader and len(a.sent) == before, "the woken leader sent again"
    assert_each_tick_once(a, b)


def test_a_leader_paused_between_its_lease_check_and_its_claim_cannot_send(r9: tuple[redis.Redis, str]) -> None:
    client, prefix = r9
    app = make_app(prefix)
    a, b = Recording(app), Recording(app)
    drive([a], 0.5)
    assert a.is_leader and a.sent
    a._next_check = math.inf  # a believes its lease good: the pause falls right after a check
    drive([b], 1.5)
    assert b.is_leader and b.sent
    assert client.get(f"{prefix}:{{beat}}:leader") == b.token.encode()  # the fault: a believes it leads
    before, attempts = len(a.sent), sum(a.claims.values())
    a.tick()  # a is due and goes straight to the claim
    assert sum(a.claims.values()) == attempts + 1, "a did not try to send as a stale leader"
    assert len(a.sent) == before, "the stale leader sent"
    assert a.claims["not_leader"] == 1 and not a.is_leader
    assert_each_tick_once(a, b)


def test_a_tick_already_claimed_is_not_sent_again(r9: tuple[redis.Redis, str]) -> None:
    client, prefix = r9
    app = make_app(prefix, every=60.0)
    a = Recording(app)
    assert a.check_lease()
    entry = a.schedule["job"]
    entry.last_run_at = app.now() - timedelta(seconds=61)  # a stale view: due by a's own clock
    newer = to_ms(app.now()) + 30_000  # ... but another leader already sent a newer tick
    client.hset(f"{prefix}:{{beat}}:last-run", "job", newer)
    assert a.apply_async(entry) is None
    assert a.claims["already_sent"] == 1 and a.sent == []
    assert a.schedule["job"].last_run_at == from_ms(newer, app.timezone)  # it adopts the stored tick


def test_close_gives_the_lease_back_and_a_new_leader_adopts_the_last_tick(r9: tuple[redis.Redis, str]) -> None:
    client, prefix = r9
    app = make_app(prefix)
    a, b = Recording(app), Recording(app)
    drive([a, b], 0.7)
    a.close()
    assert client.get(f"{prefix}:{{beat}}:leader") is None
    assert b.check_lease()
    assert to_ms(b.schedule["job"].last_run_at) == max(t for _, t in a.sent)
    drive([b], 0.5)
    assert_each_tick_once(a, b)


def test_a_leader_that_loses_redis_stops_sending(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        a = Recording(make_app("beat-test", url=server.url))
        drive([a], 0.5)
        assert a.is_leader and a.sent
        server.stop()
        before = len(a.sent)
        drive([a], 0.6)
        assert not a.is_leader and len(a.sent) == before
    finally:
        server.stop()
        clients.close_all()


# -- two real beat processes --------------------------------------------------------------


class BeatProcess:
    """One ``celery beat`` subprocess of tests/beat_app.py, in its own process group."""

    def __init__(self, name: str, redis_url: str, log_dir: Path, scheduler: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        cmd = [CELERY, "-A", "tests.beat_app", "beat", "-l", "INFO", "-s", str(log_dir / f"{name}-schedule")]
        if scheduler:
            cmd += ["-S", scheduler]
        env = {**os.environ, "TEST_BEAT_REDIS": redis_url, "TEST_BEAT_LEASE": str(LEASE), "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        def found() -> bool:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"beat {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return False

        wait_until(found, timeout, what=f"beat {self.name} to log {text!r}")

    def signal(self, sig: int) -> None:
        _killpg(self.proc.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        _stop_group(self.proc, 5)
        self._log.close()


@pytest.fixture()
def beats(private_redis: RedisServer, tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    started: list[BeatProcess] = []

    def start(name: str, scheduler: str | None = None) -> BeatProcess:
        beat = BeatProcess(name, private_redis.url, tmp_path, scheduler)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def sent(client: redis.Redis) -> list[tuple[int, int]]:
    """(tick, sender pid) of every ``beat_app.tick`` message in the queue, oldest tick first."""
    out = []
    for raw in client.lrange("beat-tests", 0, -1):
        headers = json.loads(raw)["headers"]
        assert headers["task"] == "beat_app.tick" and headers[ENTRY_HEADER] == "tick-every-second"
        out.append((headers[TICK_HEADER], int(headers["origin"].split("@")[0].removeprefix("gen"))))
    return sorted(out)


def assert_once_per_tick(rows: list[tuple[int, int]]) -> None:
    ticks = [t for t, _ in rows]
    assert max(Counter(ticks).values()) == 1, f"a tick was sent twice: {Counter(ticks).most_common(3)}"
    assert all((t - ticks[0]) % 1000 == 0 for t in ticks), f"ticks off the 1 s grid: {ticks}"


def wait_sent_by(client: redis.Redis, pid: int, after: int, timeout: float) -> float:
    """Seconds until a message with a tick above ``after`` comes from ``pid``."""
    started = time.monotonic()
    wait_until(lambda: any(p == pid and t > after for t, p in sent(client)), timeout, what=f"a send by {pid}")
    return time.monotonic() - started


def test_two_beats_one_sends_and_the_other_takes_over(
    beats: Callable[..., BeatProcess], private_redis: RedisServer
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    one = beats("one")
    one.wait_log("is the leader")
    two = beats("two")
    two.wait_log("standing by")
    mark = sent(client)[-1][0] if sent(client) else 0
    wait_until(lambda: len([t for t, _ in sent(client) if t > mark]) >= 3, 6, what="three ticks with two beats up")
    rows = sent(client)
    assert {p for _, p in rows} == {one.proc.pid}, "the standby sent while the leader lived"
    ticks = [t for t, _ in rows]
    assert all(y - x == 1000 for x, y in itertools.pairwise(ticks)), f"the leader missed or repeated a tick: {ticks}"

    # SIGSTOP the leader past its lease: the standby takes over ...
    one.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    took = wait_sent_by(client, two.proc.pid, ticks[-1], LEASE + 2)
    assert took <= LEASE + 2
    time.sleep(max(0.0, LEASE + 2 - (time.monotonic() - stopped)))
    # ... and the stopped one, woken, sends nothing.
    woken = sent(client)[-1][0]
    one.signal(signal.SIGCONT)
    one.wait_log("lost the leader lease", timeout=20)
    time.sleep(2.5)
    rows = sent(client)
    first_of_two = min(t for t, p in rows if p == two.proc.pid)
    assert all(t < first_of_two for t, p in rows if p == one.proc.pid), "the woken leader sent"
    assert [t for t, p in rows if p == two.proc.pid and t > woken], "the new leader stopped sending"

    # SIGKILL the new leader: the first one takes over within the lease.
    last = sent(client)[-1][0]
    two.signal(signal.SIGKILL)
    assert wait_sent_by(client, one.proc.pid, last, LEASE + 2) <= LEASE + 2
    assert_once_per_tick(sent(client))


def test_a_beat_stopped_right_before_its_claim_cannot_send_when_it_wakes(
    beats: Callable[..., BeatProcess], private_redis: RedisServer
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    one = beats("one", scheduler="tests.beat_app:StopBeforeClaimScheduler")
    wait_until(lambda: client.get("beat-test:test:stopped-before-claim"), 20, what="the leader to stop before a claim")
    two = beats("two")
    wait_sent_by(client, two.proc.pid, 0, 20)
    one.signal(signal.SIGCONT)
    wait_until(lambda: client.get("beat-test:test:resumed"), 20, what="the stopped leader to resume")
    # The woken leader finds the lease gone: at the claim it stopped before (the fence), or,
    # if its lease check runs first on a loaded machine, there. Either way it steps down.
    wait_until(
        lambda: "at the claim of tick-every-second" in one.log() or "lost the leader lease" in one.log(),
        30,
        what="the woken leader to step down",
    )
    time.sleep(1.5)
    assert {p for _, p in sent(client)} == {two.proc.pid}, "the stale leader sent its claimed tick"

    # A clean stop hands over at once, well inside the lease.
    last = sent(client)[-1][0]
    two.signal(signal.SIGTERM)
    two.wait_log("released the leader lease", timeout=20)
    assert wait_sent_by(client, one.proc.pid, last, LEASE) < LEASE
    assert_once_per_tick(sent(client))
