"""The gauges' collector: formatting, caching, and a backend that is down."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_reliable.metrics.collector import ReliableCollector


class FakeSource:
    """Fixed values; ``down`` names parts whose backend raises."""

    def __init__(self, down: tuple[str, ...] = ()) -> None:
        self.down = down
        self.reads = 0

    def _check(self, part: str) -> None:
        if part in self.down:
            raise ConnectionError(f"{part} is down")

    def deferred(self) -> Mapping[str, int]:
        self.reads += 1
        self._check("deferred")
        return {"due": 4, "inflight": 1, "broken": 0}

    def dead_letters(self) -> Mapping[str, int] | None:
        self._check("dead_letters")
        return {"non_retryable": 2, "poison": 1}

    def breakers(self) -> Mapping[str, str]:
        self._check("breakers")
        return {"stripe": "open", "mail": "closed"}

    def bulkheads(self) -> Mapping[str, tuple[int, int]]:
        self._check("bulkheads")
        return {"critical": (3, 50)}

    def outbox(self) -> Mapping[str, float] | None:
        self._check("outbox")
        return {"pending": 7, "dead": 1, "lag_seconds": 2.5}

    def queue_depths(self) -> Mapping[str, int]:
        self._check("queue_depth")
        return {"celery": 12}


def samples(collector: ReliableCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape through a registry and parse the exposition text back."""
    reg = CollectorRegistry()
    reg.register(collector)
    text = generate_latest(reg).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_gauge_is_exposed_with_its_labels() -> None:
    got = samples(ReliableCollector(FakeSource()))
    assert got[("reliable_deferred_backlog", (("state", "due"),))] == 4
    assert got[("reliable_deferred_backlog", (("state", "inflight"),))] == 1
    assert got[("reliable_dead_letters", (("reason", "non_retryable"),))] == 2
    assert got[("reliable_circuit_state", (("breaker", "stripe"), ("state", "open")))] == 1
    assert got[("reliable_circuit_state", (("breaker", "stripe"), ("state", "closed")))] == 0
    assert got[("reliable_circuit_state", (("breaker", "mail"), ("state", "closed")))] == 1
    assert got[("reliable_bulkhead_slots_in_use", (("bulkhead", "critical"),))] == 3
    assert got[("reliable_bulkhead_slots", (("bulkhead", "critical"),))] == 50
    assert got[("reliable_outbox_pending", ())] == 7
    assert got[("reliable_outbox_dead", ())] == 1
    assert got[("reliable_outbox_lag_seconds", ())] == 2.5
    assert got[("reliable_queue_depth", (("queue", "celery"),))] == 12
    assert not [key for key in got if key[0] == "reliable_scrape_errors_total"]


@pytest.mark.parametrize("part", ["deferred", "dead_letters", "breakers", "bulkheads", "outbox", "queue_depth"])
def test_a_backend_down_loses_only_its_gauges_and_is_counted(part: str) -> None:
    collector = ReliableCollector(FakeSource(down=(part,)), cache_seconds=0)
    got = samples(collector)
    assert got[("reliable_scrape_errors_total", (("part", part),))] == 1
    assert ("reliable_queue_depth", (("queue", "celery"),)) in got or part == "queue_depth"
    assert ("reliable_deferred_backlog", (("state", "due"),)) in got or part == "deferred"
    assert samples(collector)[("reliable_scrape_errors_total", (("part", part),))] == 2


def test_readings_are_cached_for_cache_seconds() -> None:
    now = [100.0]
    source = FakeSource()
    collector = ReliableCollector(source, cache_seconds=2.0, clock=lambda: now[0])
    samples(collector)
    samples(collector)
    assert source.reads == 1
    now[0] += 2.0
    samples(collector)
    assert source.reads == 2


def test_without_database_or_outbox_those_gauges_are_absent() -> None:
    class NoDatabase(FakeSource):
        def dead_letters(self) -> None:
            return None

        def outbox(self) -> None:
            return None

    names = {key[0] for key in samples(ReliableCollector(NoDatabase()))}
    assert "reliable_dead_letters" not in names
    assert "reliable_outbox_lag_seconds" not in names
    assert "reliable_deferred_backlog" in names
