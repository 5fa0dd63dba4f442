"""Bad input gets a clear error that names the problem, and nothing is lost."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis
from sqlalchemy.engine import Engine

from celery_reliable import IdempotencyKeyError, MessageTooLarge, ResultNotSerializable, SerializationError
from tests.conftest import REDIS, TEST_DBS, effects
from tests.harness import WorkerProcess, wait_until
from tests.worker_app import add, app, charge, returns_set

broker = redis.Redis.from_url(f"{REDIS}/{TEST_DBS['broker']}")


def _queued() -> int:
    return int(broker.llen("reliable-tests"))


def test_call_missing_a_key_argument_fails_at_publish(clean) -> None:
    with pytest.raises(IdempotencyKeyError, match=r"charge:\{order_id\}.*'order_id'"):
        charge.apply_async(kwargs={"amount": 3})
    assert _queued() == 0


def test_arguments_json_cannot_hold_fail_at_publish(clean) -> None:
    with pytest.raises(SerializationError, match=r"\['args'\]\[1\].*datetime"):
        charge.delay("o-1", dt.datetime.now())
    with pytest.raises(SerializationError, match="float"):
        charge.delay("o-1", float("nan"))
    assert _queued() == 0


def test_oversized_arguments_are_refused_at_publish(clean) -> None:
    limit = app.conf.reliable_max_message_bytes
    with pytest.raises(MessageTooLarge, match=r"tests\.worker_app\.add: arguments of 1,200,0\d\d bytes exceed") as err:
        add.delay("x" * 1_200_000, 1)
    assert err.value.limit == limit == 1_048_576 and err.value.size > limit
    with pytest.raises(MessageTooLarge):  # keyword arguments count too
        add.apply_async(kwargs={"x": ["y" * 600_000] * 2, "y": 1})
    with pytest.raises(MessageTooLarge):  # a keyed task is refused before anything is claimed
        charge.delay("o-big" * 300_000, 1)
    assert _queued() == 0
    assert add.delay("x" * 1000, "y").id  # a normal call still goes through
    assert _queued() == 1


@pytest.mark.parametrize("order_id", ["ключ-🧾-订单", "x" * 5000, "nul\x00byte", "{brace}}:{tag}", " "])
def test_odd_unicode_and_long_keys_work_end_to_end(order_id, workers, engine: Engine) -> None:
    workers("w1", {})
    first = charge.delay(order_id, 7).get(timeout=20)
    again = charge.delay(order_id, 7).get(timeout=20)
    assert first == again == {"order_id": order_id, "charged": 7}
    assert effects(engine) == {order_id.replace("\x00", "\\x00"): 1}


def test_result_json_cannot_hold_is_a_clear_failure_and_the_key_stays_usable(workers, ledger) -> None:
    workers("w1", {})
    r = returns_set.delay(4)
    with pytest.raises(ResultNotSerializable, match=r"result of tests\.worker_app\.returns_set"):
        r.get(timeout=20)
    r2 = returns_set.delay(4)
    with pytest.raises(ResultNotSerializable):
        r2.get(timeout=20)
    assert ledger.llen("returns_set") == 2  # not cached as a result: the next call ran again


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"reliable_claim_lease": "soon"}, "reliable_claim_lease"),
        ({"reliable_claim_leese": 3}, "did you mean 'reliable_claim_lease'"),
        ({"reliable_pump_batch": 0}, "reliable_pump_batch"),
        ({"reliable_lock_backend": "zookeeper"}, "reliable_lock_backend: expected one of 'redis'"),
        (
            {"reliable_lock_backend": "redlock", "reliable_redlock_urls": []},
            "reliable_redlock_urls: task tests.worker_app.exclusive",
        ),
        ({"reliable_database_url": None}, "reliable_database_url: task tests.worker_app.pg_exclusive"),
    ],
)
def test_bad_settings_stop_the_worker_at_start_naming_the_setting(settings, named, tmp_path, clean) -> None:
    w = WorkerProcess("bad", {"TEST_EXTRA_SETTINGS": json.dumps(settings)}, tmp_path)
    try:
        wait_until(lambda: w.proc.poll() is not None, 30, what="the worker to refuse to start")
        assert w.proc.returncode != 0
        assert named in w.log()
        assert " ready." not in w.log()
    finally:
        w.stop()


def test_nothing_is_published_for_bad_calls_even_with_a_worker(workers) -> None:
    workers("w1", {})
    for bad in (lambda: charge.delay(object(), 1), lambda: charge.apply_async(("a",), {"nope": 1})):
        with pytest.raises((SerializationError, IdempotencyKeyError)):
            bad()
    assert _queued() == 0
