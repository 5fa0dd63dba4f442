"""Read the gauges' values from one app's backends (Redis, the database, the broker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from ..runtime import Runtime


class AppSource:
    """The :class:`~celery_reliable.metrics.collector.Source` of a Celery app.

    Args:
        app: the app; its settings name the backends, its tasks the breakers and bulkheads.
        queues: the queues whose depth is reported (default: those the worker consumes
            from, else every queue the app declares).
    """

    def __init__(self, app: Celery, queues: Sequence[str] | None = None) -> None:
        self.app = app
        self._queues = tuple(queues) if queues is not None else None

    @property
    def rt(self) -> Runtime:
        """The app's runtime (this process's clients)."""
        from ..runtime import runtime

        return runtime(self.app)

    def deferred(self) -> dict[str, int]:
        """Deferred-set sizes by state."""
        return self.rt.deferred().sizes()

    def dead_letters(self) -> dict[str, int] | None:
        """Dead letters by reason (``None`` without a database)."""
        from ..deadletter.store import DeadLetterStore

        rt = self.rt
        return DeadLetterStore(rt.engine()).count("reason") if rt.has_database else None

    def breakers(self) -> dict[str, str]:
        """The state of every breaker the settings name or a registered task uses."""
        from ..breaker_guard import BreakerSpec, breaker_for

        rt = self.rt
        specs: dict[str, BreakerSpec] = {name: BreakerSpec(name, None, None) for name in rt.config.circuit_breakers}
        for task in list(self.app.tasks.values()):
            spec: BreakerSpec | None = getattr(task, "_reliable_breaker", None)
            if spec is not None:
                specs.setdefault(spec.name, spec)
        return {name: breaker_for(spec, rt).state().state.value for name, spec in specs.items()}

    def bulkheads(self) -> dict[str, tuple[int, int]]:
        """Slots in use and size of every tier of ``reliable_bulkheads`` and every task's own bulkhead."""
        from ..bulkhead_guard import BulkheadSpec, bulkhead_for

        rt = self.rt
        found: dict[str, Any] = {}
        for tier in rt.config.bulkheads:
            found[tier] = bulkhead_for(BulkheadSpec(tier, None, "defer", None), rt)
        for task in list(self.app.tasks.values()):
            spec: BulkheadSpec | None = getattr(task, "_reliable_bulkhead", None)
            if spec is not None and spec.bulkhead is not None:
                found.setdefault(spec.bulkhead.name, spec.bulkhead)
        return {name: (int(b.in_use()), int(b.size)) for name, b in found.items()}

    def outbox(self) -> dict[str, float] | None:
        """Outbox pending and dead rows and lag (``None`` without a database)."""
        from ..outbox.admin import outbox_status

        rt = self.rt
        return outbox_status(rt.engine()) if rt.has_database else None

    def queues(self) -> list[str]:
        """The queues whose depth is reported."""
        if self._queues is not None:
            return list(self._queues)
        declared = self.app.amqp.queues
        return sorted(declared.consume_from or declared)

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each queue (read now, not from the per-publish cache)."""
        from ..bulkhead.queue_depth import queue_depth

        return {queue: queue_depth(self.app, queue, max_age=0) for queue in self.queues()}
