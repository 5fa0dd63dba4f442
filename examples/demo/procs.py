"""The demo's processes: a private redis-server, real ``celery worker`` processes, beat and Flower.

Every process starts in its own session (so its process group is its pid) and is
stopped by that process group, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

#: The repository root, so ``celery -A examples.demo.app`` imports from any cwd.
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s live child processes (read from ``/proc``; zombies left out)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(p for p in set(found) if _live(_stat(Path(f"/proc/{p}/stat"))))


def _stat(path: Path) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _live(fields: list[str]) -> bool:
    """Whether a process with these stat fields exists and is not a zombie."""
    return bool(fields) and fields[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat)
        if len(fields) > 2 and fields[2] == str(pgid) and _live(fields):
            return True
    return False


def wait_for_redis(url: str, timeout: float) -> bool:
    """Ping ``url`` until it answers or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            if client.ping():
                return True
        except redis.RedisError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        finally:
            client.close()


class Processes:
    """Starts processes in their own sessions and stops every one of them by pid."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; its output goes to ``<logdir>/<name>.log``."""
        with open(self.logdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = proc
        return proc

    def redis_server(self) -> str:
        """Start a private, memory-only ``redis-server`` on a free port; return its URL.

        Raises:
            RuntimeError: if it did not answer within 10 seconds.
        """
        port = free_port()
        self.spawn(
            "redis",
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.logdir),
                "--databases",
                "16",
            ],
        )
        url = f"redis://127.0.0.1:{port}"
        if not wait_for_redis(url, 10):
            raise RuntimeError(f"redis-server did not start; see {self.logdir / 'redis.log'}")
        return url

    def worker(
        self, name: str, app: str, queues: list[str], concurrency: int, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``celery worker -E`` (prefork) for ``app``, consuming ``queues``."""
        return self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-Q",
                ",".join(queues),
                "-n",
                f"{name}@%h",
                "-l",
                "warning",
                "-E",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
        )

    def beat(self, app: str, schedule: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``celery beat`` for ``app`` (its scheduler is the app's: celery_reliable's LeaderScheduler)."""
        return self.spawn(
            "beat", [sys.executable, "-m", "celery", "-A", app, "beat", "-l", "info", "-s", str(schedule)], env
        )

    def flower(self, app: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``celery flower`` for ``app`` on 127.0.0.1:``port``."""
        return self.spawn(
            "flower",
            [sys.executable, "-m", "celery", "-A", app, "flower", f"--port={port}", "--address=127.0.0.1"],
            env,
        )

    def kill_group(self, name: str) -> None:
        """SIGKILL the whole process group of ``name`` (the process and its children)."""
        proc = self.started[name]
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop everything we started: the workers first, then the Redis they talk to."""
        self._stop([p for name, p in self.started.items() if name != "redis"], grace)
        self._stop([p for name, p in self.started.items() if name == "redis"], grace)

    @staticmethod
    def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
        """SIGTERM each process group, SIGKILL what is left after ``grace`` s, then reap.

        Leaders are reaped only after their group is gone, so a group id can never
        name somebody else's processes when we signal it.
        """
        groups = [proc for proc in procs if group_alive(proc.pid)]
        for proc in groups:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(group_alive(proc.pid) for proc in groups):
            time.sleep(0.05)
        for proc in groups:
            _signal_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last ``lines`` lines of ``name``'s log."""
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
