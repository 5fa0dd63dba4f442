"""Settings are parsed once into a typed config; mistakes name the setting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery import Celery

from celery_reliable import ConfigurationError, UnknownOptionError, get_config
from celery_reliable.defaults import SETTINGS
from celery_reliable.errors import SerializationError
from celery_reliable.jsoncodec import dumps, fingerprint


def _app(**conf: object) -> Celery:
    app = Celery("cfg", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults_and_normalised_durations() -> None:
    cfg = get_config(_app(reliable_claim_lease=timedelta(seconds=12), reliable_idempotency_ttl=60))
    assert cfg.claim_lease_ms == 12_000 and cfg.idempotency_ttl_ms == 60_000
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"  # falls back to a Redis broker
    assert cfg.database_url is None


def test_parsed_once_per_app() -> None:
    app = _app()
    assert get_config(app) is get_config(app)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("reliable_claim_lease", "30s", "reliable_claim_lease: expected seconds"),
        ("reliable_claim_lease", -1, "non-negative"),
        ("reliable_pump_batch", 2.5, "reliable_pump_batch: expected a positive int"),
        ("reliable_pump_enabled", "yes", "reliable_pump_enabled: expected True or False"),
        ("reliable_database_url", 5, "reliable_database_url: expected a non-empty string"),
        ("reliable_idempotency_ttl", True, "expected seconds"),
    ],
)
def test_wrong_types_name_the_setting(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        get_config(_app(**{name: value}))


def test_unknown_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(UnknownOptionError, match="did you mean 'reliable_redis_url'"):
        get_config(_app(reliable_redis_ur="redis://x"))


def test_non_redis_broker_needs_an_explicit_redis_url() -> None:
    app = Celery("cfg", broker="amqp://guest@127.0.0.1//", set_as_current=False)
    with pytest.raises(ConfigurationError, match="reliable_redis_url"):
        get_config(app)


def test_every_setting_is_documented() -> None:
    assert all(s.name.startswith("reliable_") and len(s.doc) > 20 for s in SETTINGS)


def test_canonical_json_and_fingerprints() -> None:
    assert dumps({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    assert fingerprint((1,), {"x": 2}) == fingerprint([1], {"x": 2})
    assert fingerprint((1,), {}) != fingerprint((2,), {})
    with pytest.raises(SerializationError, match=r"arguments\['kwargs'\]\['when'\].*set"):
        fingerprint((), {"when": {1}})
