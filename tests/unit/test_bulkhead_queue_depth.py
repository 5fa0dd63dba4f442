"""Queue depth through kombu's in-memory transport, the depth cache and QueueFull (no services)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Queue

from celery_reliable.bulkhead import DepthCache, check_queue_depth, queue_depth
from celery_reliable.errors import ConfigurationError, QueueFull


@pytest.fixture()
def memory() -> Iterator[Connection]:
    with Connection("memory://") as connection:
        yield connection


def _fill(connection: Connection, name: str, count: int) -> None:
    producer = connection.Producer(serializer="json")
    for i in range(count):
        producer.publish({"n": i}, routing_key=name, declare=[Queue(name)])


def test_any_transport_is_read_by_a_passive_declare(memory: Connection) -> None:
    name = f"q-{uuid.uuid4().hex}"
    assert queue_depth(memory, name, max_age=0) == 0  # missing queue
    _fill(memory, name, 3)
    assert queue_depth(memory, name, max_age=0) == 3
    assert check_queue_depth(memory, name, 4, max_age=0) == 3
    with pytest.raises(QueueFull) as caught:
        check_queue_depth(memory, name, 3, max_age=0)
    assert (caught.value.queue, caught.value.depth, caught.value.max_depth) == (name, 3, 3)


def test_readings_are_reused_for_max_age(memory: Connection) -> None:
    name = f"q-{uuid.uuid4().hex}"
    other = f"q-{uuid.uuid4().hex}"
    assert queue_depth(memory, name, max_age=60) == 0
    _fill(memory, name, 2)
    _fill(memory, other, 1)
    assert queue_depth(memory, name, max_age=60) == 0, "a fresh reading was taken inside max_age"
    assert queue_depth(memory, other, max_age=60) == 1  # per queue
    assert queue_depth(memory, name, max_age=0) == 2  # 0: read now
    assert queue_depth(memory, name, max_age=60) == 0  # ... and max_age=0 leaves the cache alone


def test_the_cache_expires_and_clears() -> None:
    cache, source = DepthCache(), Connection("memory://")
    cache.put(source, "q", 5)
    assert cache.get(source, "q", 60) == 5
    assert cache.get(source, "q", 0) is None  # older than max_age 0
    assert cache.get(source, "other", 60) is None
    cache.clear()
    assert cache.get(source, "q", 60) is None


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda c: queue_depth(c, ""), "queue"),
        (lambda c: queue_depth(c, "q", max_age=-1), "max_age"),
        (lambda c: queue_depth(c, "q", max_age="1"), "max_age"),  # type: ignore[arg-type]
        (lambda c: check_queue_depth(c, "q", 0), "max_queue_depth"),
        (lambda c: check_queue_depth(c, "q", True), "max_queue_depth"),
    ],
)
def test_bad_arguments_fail_before_the_broker(call: object, option: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        call(Connection("memory://"))  # type: ignore[operator]
    assert caught.value.name == option
