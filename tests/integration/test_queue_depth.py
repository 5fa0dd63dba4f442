"""Queue depth on a real Redis broker (db 2, with priorities) and a real RabbitMQ queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from celery_reliable.bulkhead import check_queue_depth, queue_depth, read_depth
from celery_reliable.errors import QueueFull
from tests.harness import wait_until

REDIS_BROKER = "redis://127.0.0.1:6379/2"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
SEP = "\x06\x16"  # kombu's separator of a queue's priority sub-lists


def _name() -> str:
    return f"reliable-bulkhead-test-{uuid.uuid4().hex[:12]}"


def _publish(connection: Connection, queue: Queue, priorities: list[int]) -> None:
    producer = connection.Producer(serializer="json")
    for priority in priorities:
        producer.publish({"p": priority}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue],
                         priority=priority)


@pytest.fixture()
def queue() -> Queue:
    name = _name()
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


@pytest.fixture()
def redis_broker(queue: Queue) -> Iterator[Connection]:
    raw = redis.Redis.from_url(REDIS_BROKER)
    with Connection(REDIS_BROKER) as connection:
        yield connection
        queue(connection.default_channel).delete()
    left = [k for k in raw.scan_iter(match="*reliable-bulkhead-test-*", count=1000) if queue.name.encode() in k]
    assert not left, f"keys left behind: {left}"
    raw.close()


@pytest.fixture()
def rabbitmq(queue: Queue) -> Iterator[Connection]:
    with Connection(RABBITMQ) as connection:
        yield connection
        channel = connection.channel()
        channel.queue_delete(queue.name)
        channel.exchange_delete(queue.name)
        channel.close()


def test_redis_broker_counts_every_priority_list(redis_broker: Connection, queue: Queue) -> None:
    _publish(redis_broker, queue, [0, 0, 3, 5, 9, 9, 9])
    raw = redis.Redis.from_url(REDIS_BROKER)
    lists = {k.decode(): raw.llen(k) for k in raw.scan_iter(match=f"{queue.name}*")}
    raw.close()
    # The fault this guards against really happens: kombu spread the messages over sub-lists.
    assert lists == {queue.name: 2, f"{queue.name}{SEP}3": 2, f"{queue.name}{SEP}9": 3}
    assert queue_depth(redis_broker, queue.name, max_age=0) == 7
    assert read_depth(redis_broker, queue.name) == 7
    assert redis_broker.default_channel._size(queue.name) == 7  # kombu's own count agrees


def test_redis_broker_honours_the_global_key_prefix(queue: Queue) -> None:
    prefix = f"{_name()}-pfx:"
    raw = redis.Redis.from_url(REDIS_BROKER)
    try:
        with Connection(REDIS_BROKER, transport_options={"global_keyprefix": prefix}) as connection:
            _publish(connection, queue, [0, 6, 6])
            assert raw.llen(f"{prefix}{queue.name}") == 1  # the lists really carry the prefix
            assert queue_depth(connection, queue.name, max_age=0) == 3
            queue(connection.default_channel).delete()
    finally:
        left = list(raw.scan_iter(match=f"{prefix}*"))
        if left:
            raw.delete(*left)
        raw.close()


def test_missing_queue_is_empty(redis_broker: Connection, rabbitmq: Connection) -> None:
    assert queue_depth(redis_broker, _name(), max_age=0) == 0
    missing = _name()
    assert queue_depth(rabbitmq, missing, max_age=0) == 0
    # The 404 closed a channel of its own: the connection's default channel still works.
    rabbitmq.default_channel.queue_declare(queue=missing, auto_delete=True)
    assert queue_depth(rabbitmq, missing, max_age=0) == 0
    rabbitmq.default_channel.queue_delete(missing)


def test_rabbitmq_counts_ready_messages(rabbitmq: Connection, queue: Queue) -> None:
    _publish(rabbitmq, queue, [0, 1, 2, 3, 4, 5, 6])
    # RabbitMQ counts a publish once it has routed it, shortly after the client sent it.
    wait_until(lambda: queue_depth(rabbitmq, queue.name, max_age=0) == 7, 10, what="7 messages counted")
    with pytest.raises(QueueFull) as caught:
        check_queue_depth(rabbitmq, queue.name, 7, max_age=0)
    assert (caught.value.depth, caught.value.max_depth) == (7, 7)
    assert check_queue_depth(rabbitmq, queue.name, 8, max_age=0) == 7
    # One consumed (and acked) message is no longer waiting.
    message = queue(rabbitmq.default_channel).get(no_ack=False)
    assert message is not None
    message.ack()
    wait_until(lambda: queue_depth(rabbitmq, queue.name, max_age=0) == 6, 10, what="6 messages counted")


def test_an_app_reads_through_its_pool_and_caches(queue: Queue) -> None:
    app = Celery("depth-test", broker=REDIS_BROKER, set_as_current=False)
    try:
        assert queue_depth(app, queue.name, max_age=60) == 0
        with Connection(REDIS_BROKER) as connection:
            _publish(connection, queue, [0, 9, 9])
            assert queue_depth(app, queue.name, max_age=60) == 0, "the cached reading was not reused"
            assert queue_depth(app, queue.name, max_age=0) == 3
            with pytest.raises(QueueFull):
                check_queue_depth(app, queue.name, 3, max_age=0)
            assert check_queue_depth(app, queue.name, 3, max_age=60) == 0  # a stale reading admits
            queue(connection.default_channel).delete()
    finally:
        app.close()
