"""Idempotency keys and task options, checked at declaration (no services needed)."""

from __future__ import annotations

import pytest
from celery import Celery

import celery_reliable
from celery_reliable import ConfigurationError, Idempotency, IdempotencyKeyError, ReliableTask, UnknownOptionError
from celery_reliable.idempotency.keys import MAX_KEY_BYTES, scoped_key


@pytest.fixture()
def app() -> Celery:
    return Celery("unit", broker="memory://", set_as_current=False)


def test_public_surface_is_sorted_and_complete() -> None:
    assert celery_reliable.__all__ == sorted(celery_reliable.__all__)
    assert all(hasattr(celery_reliable, n) for n in celery_reliable.__all__)


def test_template_over_positional_and_keyword_arguments(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, bind=True, idempotency_key="charge:{order_id}:{amount}")
    def charge(self, order_id, amount=5):
        return None

    spec = charge._reliable_spec
    assert spec.scoped(charge.name, ("o1",), {}) == f"{charge.name}||charge:o1:5"
    assert spec.scoped(charge.name, (), {"order_id": "o1", "amount": 7}) == f"{charge.name}||charge:o1:7"


def test_template_with_item_access_and_namespace(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, idempotency_key="{order[id]}", idempotency_namespace="tenant-{tenant}")
    def ship(order, tenant):
        return None

    assert ship._reliable_spec.scoped(ship.name, ({"id": 9}, "acme"), {}) == f"{ship.name}|tenant-acme|9"


def test_true_hashes_all_arguments_deterministically(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, idempotency_key=True)
    def f(a, b):
        return None

    k1 = f._reliable_spec.scoped(f.name, (1, {"x": 1, "y": 2}), {})
    k2 = f._reliable_spec.scoped(f.name, (1, {"y": 2, "x": 1}), {})
    k3 = f._reliable_spec.scoped(f.name, (2, {"x": 1, "y": 2}), {})
    assert k1 == k2 != k3 and "sha256:" in k1


def test_callable_key_and_its_errors(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask, idempotency_key=lambda user, n: f"{user}/{n}")
    def g(user, n):
        return None

    assert g._reliable_spec.scoped(g.name, ("u", 3), {}).endswith("|u/3")

    @app.task(shared=False, base=ReliableTask, idempotency_key=lambda n: None)
    def h(n):
        return None

    with pytest.raises(IdempotencyKeyError, match="non-empty str"):
        h._reliable_spec.scoped(h.name, (1,), {})


def test_template_naming_an_unknown_argument_fails_at_declaration(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match=r"names 'order'.*its arguments: order_id, amount"):

        @app.task(shared=False, base=ReliableTask, idempotency_key="charge:{order}")
        def charge(order_id, amount):
            return None

        charge.name  # noqa: B018  # Celery creates task classes lazily: the first use declares it


def test_positional_template_fields_are_refused(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="not positions"):

        @app.task(shared=False, base=ReliableTask, idempotency_key="charge:{0}")
        def charge(order_id):
            return None

        charge.name  # noqa: B018


def test_unknown_option_fails_with_a_suggestion(app: Celery) -> None:
    with pytest.raises(UnknownOptionError, match="did you mean 'idempotency_key'"):

        @app.task(shared=False, base=ReliableTask, idempotensy_key="x")
        def f():
            return None

        f.name  # noqa: B018


def test_celery_options_and_decorator_options_are_accepted(app: Celery) -> None:
    @app.task(
        shared=False, base=ReliableTask, acks_late=True, max_retries=2, autoretry_for=(KeyError,), retry_backoff=True
    )
    def f():
        return None

    assert f.acks_late is True and f.max_retries == 2


def test_wrong_option_values_and_clashes(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="idempotency_key: expected"):

        @app.task(shared=False, base=ReliableTask, idempotency_key=42)
        def a():
            return None

        a.name  # noqa: B018
    with pytest.raises(ConfigurationError, match=r"idempotency_ttl.*clashes"):

        @app.task(shared=False, base=ReliableTask, idempotency_key=Idempotency("k"), idempotency_ttl=5)
        def b():
            return None

        b.name  # noqa: B018
    with pytest.raises(ConfigurationError, match="idempotency_on_publish: expected True or False"):

        @app.task(shared=False, base=ReliableTask, idempotency_key="k", idempotency_on_publish="yes")
        def c():
            return None

        c.name  # noqa: B018
    with pytest.raises(ConfigurationError, match="at least one second"):

        @app.task(shared=False, base=ReliableTask, idempotency_key="k", idempotency_ttl=0.5)
        def d():
            return None

        d.name  # noqa: B018


def test_no_options_compiles_to_nothing(app: Celery) -> None:
    @app.task(shared=False, base=ReliableTask)
    def plain(x):
        return x

    assert plain._reliable_spec is None
    assert plain(3) == 3


@pytest.mark.parametrize("key", ["ключ-🧾", "a" * 1000, "nul\x00", "lone\ud800surrogate"])
def test_scoped_keys_store_any_unicode(key: str) -> None:
    scoped = scoped_key("t", key)
    scoped.encode("utf-8")  # always storable
    assert "\x00" not in scoped
    assert len(scoped.encode()) <= MAX_KEY_BYTES + 80
    assert scoped_key("t", key) == scoped  # deterministic
    assert scoped_key("t", key + "!") != scoped


def test_keys_are_scoped_by_task_and_namespace() -> None:
    assert scoped_key("a", "k") != scoped_key("b", "k")
    assert scoped_key("a", "k", "t1") != scoped_key("a", "k", "t2")
    assert scoped_key("a", "k") == "a||k"


def test_reliable_task_without_install_still_gets_the_worker_step(app: Celery) -> None:
    from celery_reliable.bootstep import ReliableStep

    @app.task(shared=False, base=ReliableTask)
    def plain(x):
        return x

    plain.name  # noqa: B018 - binds the task to the app
    assert ReliableStep in app.steps["worker"]
    assert app.conf.reliable_claim_lease == 30.0  # defaults registered
