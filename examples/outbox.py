"""The transactional outbox: a task is published if and only if the order's transaction commits.

Run it from the repository root (needs Redis on 127.0.0.1:6379; uses its db 3 as the
broker and SQLite in a temporary directory)::

    python -m examples.outbox

In production beat runs the relay every second (``celery_reliable.install`` adds the
entry), or every worker relays at commit with ``reliable_outbox_listen = True`` on
PostgreSQL. A consumer deduplicates on ``self.request.id``, the id ``enqueue`` returned.
"""

from __future__ import annotations

import os
import tempfile

from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import celery_reliable
from celery_reliable import migrate
from celery_reliable.outbox import enqueue, outbox_status, relay_outbox

BROKER = os.environ.get("EXAMPLE_BROKER_URL", "redis://127.0.0.1:6379/3")
DATABASE = f"sqlite:///{tempfile.mkdtemp(prefix='outbox-example-')}/shop.db"

app = Celery("shop", broker=BROKER)
app.conf.update(reliable_redis_url=BROKER, reliable_database_url=DATABASE, task_default_queue="shop-receipts")
celery_reliable.install(app)


@app.task(name="shop.send_receipt", bind=True)
def send_receipt(self: object, order_id: str) -> str:
    """The consumer: dedup on ``self.request.id`` (the outbox message id) before any side effect."""
    return f"receipt for {order_id}"


def place_order(session: Session, order_id: str, customer: str, fail: bool = False) -> str:
    """Write the order and its receipt message in one transaction."""
    session.execute(text("INSERT INTO orders (id, customer) VALUES (:i, :c)"), {"i": order_id, "c": customer})
    message_id = enqueue(session, send_receipt.s(order_id), ordering_key=f"customer:{customer}")
    if fail:
        raise RuntimeError(f"payment declined for {order_id}")
    return message_id


def main() -> None:
    """Place three orders (one fails), relay, and show what reached the broker."""
    engine = create_engine(DATABASE)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL)"))
    for order_id, fail in (("o-1", False), ("o-2", True), ("o-3", False)):
        try:
            with Session(engine) as session, session.begin():
                message_id = place_order(session, order_id, "alice", fail)
            print(f"{order_id}: committed, message {message_id}")
        except RuntimeError as exc:
            print(f"{order_id}: rolled back ({exc}); no message")
    print("before relay:", outbox_status(engine))
    print("relay:", relay_outbox(app, engine=engine))
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("shop-receipts")
        try:
            while True:
                msg = queue.get(timeout=0.5)
                print("broker holds:", msg.headers["task"], msg.payload[0], "task id", msg.headers["id"])
                msg.ack()
        except queue.Empty:
            pass
        finally:
            queue.close()
    print("after relay:", outbox_status(engine))


if __name__ == "__main__":
    main()
