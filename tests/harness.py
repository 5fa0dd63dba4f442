"""Start and stop real ``celery worker`` and ``redis-server`` processes for tests.

Every process is started in its own session and stopped by its process group id, so a
test never leaves workers (or their prefork children) behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _killpg(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)  # children may outlive their parent
        return
    if _killpg(proc.pid, signal.SIGTERM):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


class WorkerProcess:
    """One ``celery worker`` subprocess running ``tests.worker_app``.

    Args:
        name: node name (also names the log file).
        env: extra environment (TEST_* variables of tests/worker_app.py, failpoints).
        pool: ``prefork`` or ``solo``.
        concurrency: prefork children.
        log_dir: where the worker's log goes.
    """

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        pool: str = "prefork",
        concurrency: int = 2,
        app: str = "tests.worker_app",
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        queue = env.get("TEST_QUEUE", "reliable-tests")
        if env.get("TEST_EXTRA_QUEUES"):  # more queues to consume, e.g. one per bulkhead tier
            queue = f"{queue},{env['TEST_EXTRA_QUEUES']}"
        cmd = [
            CELERY,
            "-A",
            app,
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """The worker's log so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Wait for the worker's ``ready`` line; fail with its log if it dies first."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return " ready." in self.log()

        wait_until(ready, timeout, what=f"worker {self.name} to be ready")
        return self

    def children(self) -> list[int]:
        """Process ids of the prefork children."""
        try:
            out = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in out.split()]

    def stop(self, grace: float = 10.0) -> None:
        """Stop the worker and every child (SIGTERM, then SIGKILL)."""
        _stop_group(self.proc, grace)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the worker and all its children at once."""
        _killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


class RedisServer:
    """A private ``redis-server`` on a free port (no persistence), for fault tests."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart) the server on the same port, empty."""
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._log_dir),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, what="redis-server to answer")
        client.close()

    def stop(self) -> None:
        """Kill the server."""
        if self.proc is not None:
            _stop_group(self.proc, 5)
            self.proc = None


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False
