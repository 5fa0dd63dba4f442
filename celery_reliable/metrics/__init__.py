"""Prometheus metrics: counters of every reliability decision and gauges of what is held.

Turned on by ``reliable_metrics_port``: the worker's parent serves
``http://<reliable_metrics_addr>:<port>/metrics``; ``celery -A proj reliable metrics``
prints the gauges once (or serves them with ``--serve PORT``). Needs ``prometheus_client``
(``pip install 'celery-reliable[metrics]'``).

- Counters (:mod:`.counters`), counted in the process that made the decision and summed
  over the prefork children (:mod:`.server`): ``reliable_deduplicated_total``,
  ``reliable_deferred_total``, ``reliable_defer_delay_seconds``,
  ``reliable_rate_limited_total``, ``reliable_circuit_open_total``,
  ``reliable_bulkhead_full_total``, ``reliable_dead_lettered_total``,
  ``reliable_lock_skipped_total``, ``reliable_lock_lost_total``,
  ``reliable_circuit_transitions_total``.
- Gauges (:mod:`.collector`), read from the backends at scrape time:
  ``reliable_deferred_backlog``, ``reliable_dead_letters``, ``reliable_circuit_state``,
  ``reliable_bulkhead_slots_in_use``, ``reliable_bulkhead_slots``,
  ``reliable_outbox_pending``, ``reliable_outbox_dead``, ``reliable_outbox_lag_seconds``,
  ``reliable_queue_depth``, and ``reliable_scrape_errors_total``.
"""

from __future__ import annotations

from .collector import ReliableCollector, Source
from .server import MetricsServer, registry
from .sources import AppSource

__all__ = ["AppSource", "MetricsServer", "ReliableCollector", "Source", "registry"]
