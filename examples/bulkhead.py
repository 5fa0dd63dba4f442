"""Bulkheads shared through Redis, and load shedding at the door by queue depth.

From the repository root::

    python -m examples.bulkhead

Needs a Redis on localhost (``BULKHEAD_REDIS_URL``, default ``redis://127.0.0.1:6379/0``;
every key of the run carries a prefix unique to it and is deleted at the end).

1. Tiers from a setting-like mapping (the seed's critical / standard / optional): twelve
   threads share the ``optional`` tier of 3 slots; never more than 3 run at once, and
   the others are told when to come back (``BulkheadFull.retry_after``).
2. A holder that dies without releasing (here: it simply never does) gives its slot
   back when its lease runs out, and not before.
3. A queue on the Redis broker with messages at three priorities: ``queue_depth`` counts
   every priority's list, and ``check_queue_depth`` refuses a publish beyond
   ``max_queue_depth`` with ``QueueFull``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import redis
from kombu import Connection, Exchange, Queue

from celery_reliable.bulkhead import check_queue_depth, queue_depth, tier_bulkheads
from celery_reliable.errors import BulkheadFull, QueueFull

URL = os.environ.get("BULKHEAD_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"bulkhead-example-{uuid.uuid4().hex[:8]}"


def tiers(client: redis.Redis) -> None:
    bulkheads = tier_bulkheads({"critical": 50, "standard": 20, "optional": 3}, client=client, prefix=PREFIX)
    optional = bulkheads["optional"]
    running, most, done, turned_away = 0, 0, 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most, done, turned_away
        for _ in range(5):
            while True:
                try:
                    with optional:
                        with lock:
                            running += 1
                            most = max(most, running)
                        time.sleep(0.02)
                        with lock:
                            running -= 1
                            done += 1
                    break
                except BulkheadFull as full:
                    with lock:
                        turned_away += 1
                    time.sleep(full.retry_after)  # a ReliableTask would defer here instead

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"1. {sorted(bulkheads)}: 12 threads ran {done} jobs through {optional!r}")
    print(f"   at most {most} at once; {turned_away} attempts found it full and came back after retry_after")


def lease_expiry(client: redis.Redis) -> None:
    tier = tier_bulkheads({"critical": 1}, client=client, lease=1.0, prefix=PREFIX)["critical"]
    tier.try_acquire()  # and then "dies": no release, no renewal
    denied = tier.try_acquire()
    print(f"2. a holder died holding the only slot; an acquire now: {denied.acquired=}, "
          f"{denied.earliest_expiry=:.2f}s")
    time.sleep(denied.earliest_expiry + 0.05)
    again = tier.try_acquire()
    print(f"   after its lease: {again.acquired=} (in use: {again.in_use})")
    assert again.slot is not None
    tier.release(again.slot)


def depth() -> None:
    queue_name = f"{PREFIX}-reports"
    exchange = Exchange(queue_name, type="direct")
    queue = Queue(queue_name, exchange, routing_key=queue_name)
    with Connection(URL) as connection:
        producer = connection.Producer(serializer="json")
        for priority in (0, 5, 9):
            for _ in range(4):
                producer.publish({"report": 1}, exchange=exchange, routing_key=queue_name, declare=[queue],
                                 priority=priority)
        print(f"3. 12 messages at priorities 0, 5 and 9: queue_depth = {queue_depth(connection, queue_name)}")
        try:
            check_queue_depth(connection, queue_name, max_depth=10)
        except QueueFull as full:
            print(f"   with max_queue_depth=10: {type(full).__name__}: {full}")
        queue(connection.default_channel).delete()


def main() -> None:
    client = redis.Redis.from_url(URL)
    try:
        tiers(client)
        lease_expiry(client)
        depth()
    finally:
        keys = list(client.scan_iter(f"{PREFIX}*"))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
