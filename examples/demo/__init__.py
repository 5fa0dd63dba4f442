"""The full demo: ``python -m examples.demo`` (``make demo``) from the repository root.

It starts a private Redis, a ``celery worker`` per bulkhead tier, ``celery beat`` with
celery-reliable's ``LeaderScheduler`` and Flower, then runs six phases with real faults
(duplicates and SIGKILLed workers, a contended singleton job, a dependency outage behind a
circuit breaker, a global rate limit over both workers, tasks that end in the dead-letter
store, a transactional outbox with rolled-back transactions) and prints an audit computed
from what it reads back: nothing lost, nothing done twice, every limit held.
"""
