"""Counters incremented in forked children are summed by the parent (multiprocess mode), no Redis needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, shutil, sys
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    import prometheus_client  # imported before the switch, as an app may have done
    from celery_reliable.metrics import counters
    from celery_reliable.metrics.server import prepare_multiprocess

    path, created = prepare_multiprocess()
    assert created and os.path.isdir(path)
    counters.enable()
    for n in range(3):  # three children, like a prefork pool; each exits at once
        pid = os.fork()
        if pid == 0:
            for _ in range(n + 1):
                counters.count("t", "task-deduplicated", {})
            counters.count("t", "task-deferred", {"reason": "locked", "delay_ms": 250})
            os._exit(0)
        os.waitpid(pid, 0)
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=path)
    sys.stdout.write(generate_latest(reg).decode())
    shutil.rmtree(path)
    """
)


def test_children_counts_are_summed_by_the_parent() -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert 'reliable_deduplicated_total{source="idempotency",task="t"} 6.0' in out
    assert 'reliable_deferred_total{reason="locked",task="t"} 3.0' in out
    assert 'reliable_defer_delay_seconds_sum{reason="locked",task="t"} 0.75' in out
