"""``python -m examples.demo`` end to end: small sizes, its own redis-server and SQLite, no TTY.

The demo starts its own processes (a private ``redis-server`` on a free port, workers per
bulkhead tier, beat, Flower) and keeps its records in SQLite in a temporary directory,
so this test touches no shared Redis or database. It checks the exit status, the audit's
``lost = 0``, and, from the printed lines, that every phase's fault really fired.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIZES = ["--orders", "40", "--reports", "6", "--rates", "8", "--partner-calls", "30", "--failing", "2", "--outbox", "8"]


def number(pattern: str, text: str) -> int:
    """The integer captured by ``pattern`` in ``text`` (fails the test when it is absent)."""
    found = re.search(pattern, text)
    assert found, f"no line matches {pattern!r}"
    return int(found.group(1))


@pytest.fixture(scope="module")
def demo_run() -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the demo once for every test in this module."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}  # private Redis + SQLite
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo", *SIZES, "--no-stay"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=170,
    )
    return proc, time.monotonic() - started


@pytest.mark.timeout(200)
def test_demo_exits_0_with_nothing_lost(demo_run: tuple[subprocess.CompletedProcess[str], float]) -> None:
    proc, seconds = demo_run
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\n{proc.stderr[-2000:]}"
    assert "ALL GUARANTEES HELD: lost = 0, double effects = 0, limits respected" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total "))
    assert total.split()[-1] == "0", total  # the audit table's lost column
    assert "[FAIL]" not in out
    for n in range(1, 7):
        assert re.search(rf"\[phase {n}\] phase {n} ok: ", out), f"phase {n} did not pass"
    assert re.search(r"Flower: http://127\.0\.0\.1:\d+", out)
    assert "keep running" not in out  # --no-stay: everything stopped
    print(f"demo took {seconds:.1f} s")


@pytest.mark.timeout(200)
def test_every_phase_fault_fired(demo_run: tuple[subprocess.CompletedProcess[str], float]) -> None:
    out = demo_run[0].stdout
    # 1: a pool process and a whole worker SIGKILLed; the replacement crashed at its failpoint;
    #    duplicates reached the workers and were answered or parked by the guards.
    assert re.search(r"fault fired: SIGKILL pool process \d+ of worker critical-1", out)
    assert re.search(r"fault fired: SIGKILL worker critical-2 \(parent and pool\)", out)
    assert number(r"duplicates caught by the guards: (\d+) answered", out) > 0
    assert number(r"(\d+) double-clicks", out) > 0
    # 2: the lock was contended, the optional bulkhead was full, a stale token was refused.
    assert number(r"(\d+) deliveries of rebuild_report found the lock held", out) > 0
    assert number(r"(\d+) deliveries of warm_cache found the optional bulkhead full", out) > 0
    stale = re.search(r"was refused: token (\d+) < (\d+)", out)
    assert stale and int(stale.group(1)) < int(stale.group(2))
    # 3: the breaker opened on the outage and parked tasks instead of failing them.
    assert number(r"breaker fx-api OPEN after (\d+) failed calls", out) >= 3
    assert number(r"(\d+) deliveries were parked while the breaker was open", out) > 0
    # 4: tasks were over the limit and parked; the busiest second stayed within 10 admissions.
    assert number(r"(\d+) deliveries were over the limit", out) > 0
    assert number(r"busiest second: (\d+) admissions", out) <= 10
    rate = re.search(r"measured (\d+\.\d+) calls/s", out)
    assert rate and float(rate.group(1)) <= 10.5
    # 5: exhausted and permanent failures were dead-lettered, then the exhausted ones replayed.
    letters = re.search(r"(\d+) tasks dead-lettered \(exhausted (\d+), permanent (\d+)\)", out)
    assert letters and (int(letters.group(2)), int(letters.group(3))) == (2, 1)
    assert number(r"replayed (\d+) exhausted letters", out) == 2
    # 6: rolled-back transactions enqueued messages that were never published; re-sent ones deduplicated.
    assert number(r"(\d+) business transactions rolled back", out) > 0
    assert re.search(r"rolled-back orders never published: 0 receipts", out)
    assert number(r"(\d+) committed messages delivered a second time", out) > 0
    assert number(r"relay_outbox (\d+)", out) > 0  # beat's LeaderScheduler sent the relay
