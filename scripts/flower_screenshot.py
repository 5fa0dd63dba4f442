"""Screenshot Flower's tasks page while our decisions are on it: docs/flower-tasks.png.

Starts a private redis-server (broker, results, reliable store, ledger), a prefork worker
of ``tests.worker_app`` with task events on, Flower, and a short workload: a duplicate
charge, a dead-lettered call, a singleton waiting for its lock, a skipped report and a
flood of a task limited to 2/s. Once Flower shows RATE-LIMITED and DEFERRED tasks next to
finished ones, headless Chromium (Debian's ``chromium``) takes the picture.

Everything it writes goes to that private Redis and a private SQLite database (or
``FLOWER_SHOT_DATABASE_URL`` if set), so it shares nothing with the test suite. Needs
``redis-server`` and ``chromium``. Run from the repository root:
``.venv/bin/python scripts/flower_screenshot.py [out.png]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from tests.harness import RedisServer, WorkerProcess, wait_until  # noqa: E402
from tests.integration.test_flower import EVENTS_ON, FlowerProcess  # noqa: E402

OUTPUT = ROOT / "docs" / "flower-tasks.png"


def _prepare_database(url: str) -> None:
    """Migrate the database and create the effects ledger ``tests.worker_app.charge`` writes to."""
    from sqlalchemy import create_engine, text

    from celery_reliable import migrate

    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS effects_ledger (id integer PRIMARY KEY, key text NOT NULL, "
                "task_id text, pid int, amount int, at timestamp DEFAULT CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()


def screenshot(url: str, out: Path, profile: Path) -> None:
    """Headless Chromium, with a few seconds for the page's table to load."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=4000",
        f"--screenshot={out}",
        "--window-size=1400,900",
        url,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def main(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="flower-shot-"))
    server = RedisServer(work)
    env = {
        "TEST_BROKER_URL": f"redis://127.0.0.1:{server.port}/0",
        "TEST_BACKEND_URL": f"redis://127.0.0.1:{server.port}/1",
        "TEST_RELIABLE_REDIS": f"redis://127.0.0.1:{server.port}/2",
        "TEST_LEDGER_REDIS": f"redis://127.0.0.1:{server.port}/3",
        "TEST_RATE_LIMIT": "2/s",
        "TEST_LOCK_TTL": "15",
        "TEST_DATABASE_URL": os.environ.get("FLOWER_SHOT_DATABASE_URL", f"sqlite:///{work / 'reliable.db'}"),
        **EVENTS_ON,
    }
    os.environ.update(env)  # before the app module reads them
    _prepare_database(env["TEST_DATABASE_URL"])
    from tests.worker_app import add, charge, exclusive, limited, report_skip, unauthorized

    flower = FlowerProcess(work, env).wait_ready()
    worker = None
    try:
        worker = WorkerProcess("w1", env, work, concurrency=4).wait_ready()
        assert add.delay(1, 2).get(timeout=10) == 3
        wait_until(lambda: any(t["state"] == "SUCCESS" for t in flower.get("/api/tasks").values()), 10)

        for i in range(10):  # 2/s: most are RATE-LIMITED for a few seconds
            limited.delay(i)
        order = f"demo-{uuid.uuid4().hex[:6]}"
        charge.delay(order, 4200).get(timeout=10)
        charge.delay(order, 4200).get(timeout=10)  # DEDUPLICATED, then SUCCESS with the stored result
        unauthorized.delay(7)  # dead-lettered: FAILURE
        report_skip.delay("2026-11-23", hold=1.0)
        time.sleep(0.3)
        report_skip.delay("2026-11-23", hold=0.1)  # lock skipped: SUCCESS with None
        exclusive.delay(1, hold=12)
        time.sleep(0.5)
        exclusive.delay(2, hold=0.1)  # DEFERRED until the first releases the lock

        def shown() -> bool:
            seen = {t["state"] for t in flower.get("/api/tasks").values()}
            return {"RATE-LIMITED", "DEFERRED", "SUCCESS", "FAILURE"} <= seen

        wait_until(shown, 15, what="flower to show the decisions")
        out.parent.mkdir(exist_ok=True)
        screenshot(f"{flower.url}/tasks", out, work / "chromium")
        states = sorted({t["state"] for t in flower.get("/api/tasks").values()})
        print(f"wrote {out} (states on the page: {json.dumps(states)})")
    finally:
        if worker is not None:
            worker.stop(grace=5)
        flower.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else OUTPUT)
