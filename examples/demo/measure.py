"""What the demo measures: body spans from the ledger, and the workers' Prometheus counters.

Spans are written by the tasks (``app.span``) on the Redis server's clock, the clock the
guards decide on. Counters come from each worker's ``/metrics`` endpoint
(``reliable_metrics_port``); a worker about to be SIGKILLed is scraped just before, so
its counts are kept.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import dataclass

import redis
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Span:
    """One body: when it started and ended (server µs), the process, and what the task noted."""

    start: int
    end: int
    pid: int
    detail: str


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def hash_counts(client: redis.Redis, key: str) -> dict[str, int]:
    """The integer fields of hash ``key``."""
    return {text(k): int(v) for k, v in client.hgetall(key).items()}


def spans(client: redis.Redis, key: str) -> list[Span]:
    """The spans recorded in ledger list ``key``, in start order."""
    found = []
    for raw in client.lrange(key, 0, -1):
        start, end, pid, *detail = text(raw).split(" ", 3)
        found.append(Span(int(start), int(end), int(pid), detail[0] if detail else ""))
    return sorted(found, key=lambda s: s.start)


def most_at_once(found: list[Span]) -> int:
    """The most spans that overlapped at any instant (an end at the same µs as a start does not overlap)."""
    events = sorted([(s.start, 1) for s in found] + [(s.end, -1) for s in found], key=lambda e: (e[0], e[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def most_in_any_window(times_us: list[int], window_us: int) -> int:
    """The most of ``times_us`` that fall in any half-open window ``[t, t + window_us)``."""
    times = sorted(times_us)
    most = first = 0
    for last, t in enumerate(times):
        while t - times[first] >= window_us:
            first += 1
        most = max(most, last - first + 1)
    return most


class Metrics:
    """The reliability counters of every worker the demo ran, summed (workers are added by name and port)."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.kept: dict[str, Counter[tuple[str, ...]]] = {}  # last scrape of each worker

    def add(self, worker: str, port: int) -> None:
        """Scrape ``worker`` on ``port`` from now on."""
        self.ports[worker] = port

    def scrape(self, worker: str) -> None:
        """Read ``worker``'s counters now and keep them (call it before SIGKILLing the worker)."""
        url = f"http://127.0.0.1:{self.ports[worker]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                text = response.read().decode()
        except OSError:
            return  # keep the previous reading
        found: Counter[tuple[str, ...]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith("reliable_") or not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                key = (sample.name, labels.get("task", ""), labels.get("reason", labels.get("source", "")))
                found[key] += int(sample.value)
        self.kept[worker] = found

    def totals(self, refresh: list[str] | None = None) -> Counter[tuple[str, ...]]:
        """Sum over workers: ``(metric, task, reason) -> count``, scraping ``refresh`` (live workers) first."""
        for worker in refresh or []:
            self.scrape(worker)
        total: Counter[tuple[str, ...]] = Counter()
        for counts in self.kept.values():
            total.update(counts)
        return total

    @staticmethod
    def by_reason(total: Counter[tuple[str, ...]], metric: str, tasks: set[str]) -> Counter[str]:
        """``metric`` of the tasks named ``tasks`` (full names), per reason."""
        found: Counter[str] = Counter()
        for (name, task, reason), value in total.items():
            if name == metric and task in tasks and value:
                found[reason] += value
        return found
