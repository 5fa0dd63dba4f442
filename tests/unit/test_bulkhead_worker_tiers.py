"""workers/tiers.py: one worker per tier, its command line from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from celery_reliable.errors import ConfigurationError
from tests.harness import ROOT
from workers.tiers import DEFAULT_CONCURRENCY, TIERS, TierWorker, tier_workers


def test_every_tier_gets_its_own_queue_node_and_pool() -> None:
    workers = tier_workers(env={})
    assert tuple(workers) == TIERS == ("critical", "standard", "optional")
    for tier, worker in workers.items():
        argv = worker.argv()
        assert argv[:6] == [sys.executable, "-m", "celery", "-A", "workers.app", "worker"]
        assert argv[argv.index("-Q") + 1] == tier == worker.queue
        assert argv[argv.index("-n") + 1] == f"{tier}@%h" == worker.node
        assert argv[argv.index("--concurrency") + 1] == str(DEFAULT_CONCURRENCY[tier])
        assert argv[-2:] == ["-l", "info"]


def test_the_environment_sets_processes_per_tier() -> None:
    env = {"CRITICAL_CONCURRENCY": "8", "WORKER_CONCURRENCY": "3", "OPTIONAL_MIN_CONCURRENCY": "1",
           "WORKER_LOGLEVEL": "warning"}
    workers = tier_workers(env=env)
    assert workers["critical"].concurrency == 8  # its own variable wins
    assert workers["standard"].concurrency == 3  # then WORKER_CONCURRENCY
    assert workers["optional"] == TierWorker("optional", 3, 1, "warning")
    assert "--autoscale=3,1" in workers["optional"].argv() and "--concurrency" not in workers["optional"].argv()
    assert workers["critical"].argv("--without-gossip")[-1] == "--without-gossip"


def test_tiers_can_be_given_and_are_checked() -> None:
    assert tier_workers({"gold": 10, "bulk-io": 50}, env={"BULK_IO_CONCURRENCY": "2"})["bulk-io"].concurrency == 2
    with pytest.raises(ConfigurationError, match=r"concurrency\['gold'\]: must be at least 1"):
        tier_workers({"gold": 0}, env={})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CRITICAL_CONCURRENCY": "lots"}, "CRITICAL_CONCURRENCY"),
        ({"CRITICAL_CONCURRENCY": "0"}, "CRITICAL_CONCURRENCY"),
        ({"WORKER_CONCURRENCY": "-2"}, "WORKER_CONCURRENCY"),
        ({"CRITICAL_CONCURRENCY": "4", "CRITICAL_MIN_CONCURRENCY": "5"}, "CRITICAL_MIN_CONCURRENCY"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        tier_workers(env=env)
    assert caught.value.name == variable


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workers", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def test_python_m_workers_lists_and_refuses_unknown_tiers() -> None:
    listed = _run("--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and all(f"-Q {tier} -n {tier}@%h" in line for line, tier in zip(lines, TIERS, strict=True))
    unknown = _run("gold")
    assert unknown.returncode == 2 and "unknown tier 'gold'" in unknown.stderr


def test_python_m_workers_execs_the_tier_worker() -> None:
    # --help makes the exec'd celery worker print its options and exit: the exec happened
    # and workers.app imported, without starting a worker.
    shown = _run("critical", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Start worker instance" in shown.stdout
