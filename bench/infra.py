"""Processes and databases the benchmark needs: a private Redis, PostgreSQL, workers.

Every process started here runs in its own session and is killed by its process group
id on :func:`stop_all`, which also runs at exit and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parent.parent
_started: list[subprocess.Popen[bytes]] = []


def stop_all() -> None:
    """Kill every process group this module started (TERM, then KILL after 10 s)."""
    while _started:
        proc = _started.pop()
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop one process group started by :func:`spawn`."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _started:
        _started.remove(proc)


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group), output to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _started.append(proc)
    return proc


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens on it, else a free port the OS picks."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_redis(port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a throw-away ``redis-server`` (no persistence); returns it and its URL."""
    port = free_port(port)
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(workdir)], workdir / "redis.log")
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {port} did not start") from None
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def prepare_database(url: str) -> Engine:
    """Create the database if missing, migrate it, create and empty the bench table."""
    from celery_reliable.migrate import upgrade

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}).first() is None:
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    engine = create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_effects (id bigserial PRIMARY KEY, n text NOT NULL, "
                          "task_id text NOT NULL, kind text NOT NULL)"))
        conn.execute(text("TRUNCATE bench_effects, reliable_idempotency"))
    return engine


def start_worker(node: str, pool: str, concurrency: int, env: dict[str, str], logdir: Path) -> subprocess.Popen[bytes]:
    """Start ``celery -A bench.app worker`` consuming only an idle queue of its own."""
    cmd = [str(ROOT / ".venv" / "bin" / "celery"), "-A", "bench.app", "worker", "-P", pool, "-c", str(concurrency),
           "-n", node, "-Q", f"bench-idle-{node.split('@')[0]}", "-l", "warning",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return spawn(cmd, logdir / f"{node.split('@')[0]}.log", env={**os.environ, **env})


def wait_ready(app: object, node: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until ``node`` answers a remote-control ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {node} exited with {proc.returncode}; see its log")
        if app.control.ping(destination=[node], timeout=0.5):  # type: ignore[attr-defined]
            return
    raise RuntimeError(f"worker {node} did not answer a ping in {timeout:.0f} s")


def workdir() -> Path:
    """A fresh directory for logs and the private Redis."""
    return Path(tempfile.mkdtemp(prefix="reliable-bench-"))
