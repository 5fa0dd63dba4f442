"""A relay process for the outbox fault tests: ``python -m tests.outbox_relay [--once]``.

Runs :func:`celery_reliable.outbox.relay_outbox` on tests/outbox_app.py's app in a loop
(or once) and prints what each run did. Tests SIGKILL it at random moments.
``OUTBOX_HOLD_BEFORE_COMMIT=0.05`` makes every transaction wait that long before its
COMMIT (after the batch was published), so random kills often land between publishing
and marking, the window the relay must survive.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from sqlalchemy import event

from celery_reliable.clients import engine_for
from celery_reliable.outbox import relay_outbox
from tests.outbox_app import DATABASE_URL, app


def main() -> None:
    """Relay until killed (``--once``: one run, then exit)."""
    once = "--once" in sys.argv
    hold = float(os.environ.get("OUTBOX_HOLD_BEFORE_COMMIT", "0"))
    if hold:

        def before_commit(_conn: Any) -> None:
            time.sleep(hold)

        event.listen(engine_for(DATABASE_URL), "commit", before_commit)
    while True:
        stats = relay_outbox(app)
        print(stats, flush=True)
        if once:
            return
        if not stats["published"]:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
