"""Flower shows our decisions: a real Flower process watching real workers.

How Flower (celery.events.state) treats our ``task-<decision>`` events, read from its
source and observed here:

- the state becomes the upper-cased event subject: ``task-rate-limited`` ->
  ``RATE-LIMITED``, ``task-deferred`` -> ``DEFERRED``, ``task-deduplicated`` ->
  ``DEDUPLICATED``;
- a custom state ranks above RECEIVED and STARTED and below SUCCESS and FAILURE
  (``celery.states.precedence``), so a parked task keeps it while it waits, even through
  the ``task-received``/``task-started`` of its own later delivery, until it finishes;
  decisions followed by an outcome (a duplicate answered with the stored result, a
  dead-lettered failure, a skipped lock) end as SUCCESS or FAILURE like any task;
- the event's own fields (``reason``, ``delay_ms``, ``key``, ``letter_id``, ...) are kept
  on Flower's task object but not in ``Task._fields``, so the API and the pages do not
  show them;
- every event is counted per type and task name in ``/metrics``
  (``flower_events_total``), so each decision stays visible there after the task ends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import states as celery_states

from tests.harness import CELERY, ROOT, WorkerProcess, _stop_group, free_port, wait_until

#: Worker settings for Flower: task events on (``celery worker -E``).
EVENTS_ON = {"TEST_EXTRA_SETTINGS": json.dumps({"worker_send_task_events": True})}


class FlowerProcess:
    """``celery -A <app> flower`` on a free local port, in its own process group.

    Args:
        log_dir: where its log goes.
        env: extra environment (the TEST_* variables that point it at the workers' broker).
        app: the Celery app module.
    """

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, app: str = "tests.worker_app") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "flower.log"
        cmd = [CELERY, "-A", app, "flower", f"--port={self.port}", "--address=127.0.0.1"]
        # Flower 2 refuses its API without authentication unless told; it listens on localhost only.
        full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "FLOWER_UNAUTHENTICATED_API": "true"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def get(self, path: str) -> Any:
        """GET ``path`` and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def text(self, path: str) -> str:
        """GET ``path`` as text (``/metrics``)."""
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return str(resp.read().decode())

    def wait_ready(self, timeout: float = 20.0) -> FlowerProcess:
        """Wait until Flower answers its health check; fail with its log if it dies first."""

        def up() -> bool:
            if self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"flower exited with {self.proc.returncode}:\n{log}")
            try:
                return self.text("/healthcheck").strip() == "OK"
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(up, timeout, interval=0.2, what="flower to answer")
        return self

    def stop(self) -> None:
        """Stop Flower and anything it started."""
        _stop_group(self.proc, 5)
        self._log.close()


class StateWatcher(threading.Thread):
    """Poll Flower's ``/api/tasks`` and remember every state each task was seen in, in order."""

    def __init__(self, flower: FlowerProcess, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.flower = flower
        self.interval = interval
        self.seen: dict[str, list[str]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        #: ``/api/task/info/<id>`` of the first task seen in each state Celery does not define.
        self.custom_info: dict[str, dict[str, Any]] = {}
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                tasks = self.flower.get("/api/tasks?limit=5000")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                tasks = {}
            with self._lock:
                for task_id, task in tasks.items():
                    states = self.seen.setdefault(task_id, [])
                    if not states or states[-1] != task["state"]:
                        states.append(task["state"])
                    self.latest[task_id] = task
            for task_id, task in tasks.items():
                if task["state"] not in celery_states.ALL_STATES and task["state"] not in self.custom_info:
                    self._info(task_id, task["state"])
            self._stop_event.wait(self.interval)

    def _info(self, task_id: str, state: str) -> None:
        try:
            info = self.flower.get(f"/api/task/info/{task_id}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return
        if info["state"] == state:
            with self._lock:
                self.custom_info[state] = info

    def states(self, task_id: str) -> list[str]:
        with self._lock:
            return list(self.seen.get(task_id, []))

    def state(self, task_id: str) -> str | None:
        with self._lock:
            task = self.latest.get(task_id)
        return None if task is None else str(task["state"])

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def events_counted(metrics: str, event_type: str, task_name: str) -> float:
    """``flower_events_total`` for one event type and task name, summed over workers."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("flower_events_total{") and f'type="{event_type}"' in line and f'task="{task_name}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_flower_shows_reliability_decisions(workers: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    from tests.worker_app import add, charge, exclusive, limited, report_skip, unauthorized

    flower = FlowerProcess(tmp_path).wait_ready()
    watcher = StateWatcher(flower)
    try:
        workers("w1", EVENTS_ON, concurrency=4)
        watcher.start()
        # Flower sees the worker's events before the decisions are made.
        warm = add.delay(1, 2)
        assert warm.get(timeout=10) == 3
        wait_until(lambda: watcher.state(warm.id) == "SUCCESS", 10, what="flower to see a plain task succeed")

        first = charge.delay("flower-1", 5)
        assert first.get(timeout=10) == {"order_id": "flower-1", "charged": 5}
        duplicate = charge.delay("flower-1", 5)  # task-deduplicated, answered with the stored result
        dead = unauthorized.delay(1)  # task-dead-lettered (HTTP 401 is permanent), then failed
        holder = exclusive.delay(1, hold=1.5)
        time.sleep(0.3)
        waiter = exclusive.delay(2, hold=0.1)  # task-deferred until the holder releases the lock
        reports = [report_skip.delay("flower-day", hold=1.0)]
        time.sleep(0.3)
        reports.append(report_skip.delay("flower-day", hold=0.1))  # task-lock-skipped
        flood = [limited.delay(i) for i in range(60)]  # 20/s: most wait for a later slot

        assert duplicate.get(timeout=10) == first.result
        assert [r.get(timeout=15) for r in flood] == list(range(60))
        assert waiter.get(timeout=10)["token"] > holder.get(timeout=10)["token"]
        assert reports[1].get(timeout=10) is None  # skipped
        dead.get(timeout=10, propagate=False)
        assert dead.state == "FAILURE"

        done = [first, duplicate, dead, holder, waiter, *reports, *flood]
        wait_until(
            lambda: all(watcher.state(r.id) in ("SUCCESS", "FAILURE") for r in done),
            10,
            what="flower to see every task finish",
        )
    finally:
        watcher.stop()
        metrics = flower.text("/metrics") if flower.proc.poll() is None else ""
        flower.stop()

    # Parked tasks: the decision is the task's state while it waits, then its outcome.
    rate_limited = [r.id for r in flood if "RATE-LIMITED" in watcher.states(r.id)]
    assert len(rate_limited) >= 20, f"only {len(rate_limited)} of 60 were seen RATE-LIMITED"
    for task_id in rate_limited:
        assert watcher.states(task_id)[-1] == "SUCCESS"
        assert watcher.states(task_id).index("RATE-LIMITED") < watcher.states(task_id).index("SUCCESS")
    assert "DEFERRED" in watcher.states(waiter.id), watcher.states(waiter.id)
    # /api/task/info says the same; the event's own fields (reason, delay_ms) are not in it.
    info = watcher.custom_info["RATE-LIMITED"]
    assert info["name"] == limited.name and info["worker"].startswith("w1@")
    assert "delay_ms" not in info and "reason" not in info
    assert watcher.states(waiter.id)[-1] == "SUCCESS"

    # Decisions followed by an outcome end as that outcome, like any Celery task.
    assert watcher.state(duplicate.id) == "SUCCESS"
    assert watcher.state(reports[1].id) == "SUCCESS"
    assert watcher.state(dead.id) == "FAILURE"
    assert "ApiError" in str(watcher.latest[dead.id]["exception"])

    # Every decision is counted by type and task name.
    for event_type, task in [
        ("task-rate-limited", limited),
        ("task-deferred", exclusive),
        ("task-deduplicated", charge),
        ("task-lock-skipped", report_skip),
        ("task-dead-lettered", unauthorized),
    ]:
        assert events_counted(metrics, event_type, task.name) >= 1, f"{event_type} of {task.name} not counted"
    assert events_counted(metrics, "task-rate-limited", limited.name) >= len(rate_limited)
    assert re.search(r'flower_events_total\{.*type="task-succeeded"', metrics)
