"""A highly available beat: two ``celery beat`` processes, one leader, every tick sent once.

Needs a Redis on localhost (or ``BEAT_REDIS_URL``). From the repository root::

    python -m examples.beat_leader

It starts two real ``celery -A examples.beat_leader beat`` processes with one entry due
every second. ``celery_reliable.install(app)`` made
:class:`~celery_reliable.beat_leader.LeaderScheduler` their scheduler: both tick, only
the holder of the leader lease (``reliable_beat_lease``, 3 s here) sends. The example
SIGKILLs the leader; the standby takes over within the lease and goes on from the next
tick. No worker runs: it reads the sent messages straight from the queue and checks that
no tick was sent twice (each message carries its tick in the ``reliable_beat_tick``
header, a stable key for an idempotent consumer).

Environment: ``BEAT_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``: broker and leader
lease, under keys of this run only, deleted at the end).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis
from celery import Celery

import celery_reliable
from celery_reliable.beat_leader import TICK_HEADER

RUN = os.environ.get("BEAT_EXAMPLE_RUN") or uuid.uuid4().hex[:8]
REDIS_URL = os.environ.get("BEAT_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"example-beat-{RUN}"
QUEUE = f"example-beat-{RUN}"
LEASE = 3.0

app = Celery("ops", broker=REDIS_URL)
app.conf.update(
    reliable_redis_url=REDIS_URL,
    reliable_key_prefix=PREFIX,  # this run's lease and last-run keys only
    reliable_beat_lease=LEASE,
    beat_schedule={"refresh-rates": {"task": "ops.refresh_rates", "schedule": 1.0, "options": {"queue": QUEUE}}},
)
celery_reliable.install(app, beat=False)  # the maintenance jobs are not needed here; the scheduler is
app.conf.beat_scheduler = "celery_reliable.beat_leader:LeaderScheduler"

ROOT = Path(__file__).resolve().parent.parent


def start_beat(name: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """One ``celery beat`` process of this module, logging to ``<log_dir>/<name>.log``."""
    celery = str(Path(sys.executable).with_name("celery"))
    cmd = [celery, "-A", "examples.beat_leader", "beat", "-l", "INFO", "-s", str(log_dir / f"{name}-schedule")]
    env = {**os.environ, "BEAT_EXAMPLE_RUN": RUN, "PYTHONPATH": str(ROOT)}
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it; closed with the process
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def sent(client: redis.Redis) -> list[tuple[int, int]]:
    """(tick in ms, pid of the beat that sent it) of every message in the queue, by tick."""
    rows = []
    for raw in client.lrange(QUEUE, 0, -1):
        headers = json.loads(raw)["headers"]
        rows.append((int(headers[TICK_HEADER]), int(headers["origin"].split("@")[0].removeprefix("gen"))))
    return sorted(rows)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> int:
    """Run two beats, kill the leader; 0 if the standby took over and no tick went out twice."""
    client = redis.Redis.from_url(REDIS_URL)
    log_dir = Path(tempfile.mkdtemp(prefix="beat-example-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = start_beat("a", log_dir)
        wait_for(lambda: "is the leader" in (log_dir / "a.log").read_text(), 30, "beat a to lead")
        procs["b"] = start_beat("b", log_dir)
        wait_for(lambda: "standing by" in (log_dir / "b.log").read_text(), 30, "beat b to stand by")
        leader, standby = procs["a"].pid, procs["b"].pid
        wait_for(lambda: len(sent(client)) >= 4, 15, "four ticks")
        print(f"beat a (pid {leader}) leads, beat b (pid {standby}) stands by")
        senders = Counter("a" if pid == leader else "b" for _, pid in sent(client))
        print(f"  ticks sent so far, by beat: {dict(senders)}")

        os.killpg(leader, signal.SIGKILL)
        killed = time.monotonic()
        print("SIGKILLed the leader")
        wait_for(lambda: any(p == standby for _, p in sent(client)), LEASE + 5, "the standby to send")
        print(f"  beat b sent its first tick {time.monotonic() - killed:.1f} s later (lease {LEASE:g} s)")
        wait_for(lambda: len([p for _, p in sent(client) if p == standby]) >= 3, 10, "three ticks from b")
        procs["b"].send_signal(signal.SIGTERM)  # a clean stop gives the lease back
        procs["b"].wait(15)

        rows = sent(client)
        ticks = [t for t, _ in rows]
        twice = [t for t, n in Counter(ticks).items() if n > 1]
        skipped = (rows[-1][0] - rows[0][0]) // 1000 + 1 - len(set(ticks))
        print(f"messages: {len(rows)}, ticks sent twice: {len(twice)}, ticks with no leader alive: {skipped}")
        by_a = [t for t, p in rows if p == leader]
        by_b = [t for t, p in rows if p == standby]
        ok = not twice and len(by_a) + len(by_b) == len(rows) and max(by_a) < min(by_b)
        return 0 if ok else 1
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pattern in (f"{PREFIX}*", f"{QUEUE}*", f"_kombu.binding.{QUEUE}*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
