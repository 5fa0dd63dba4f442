"""One worker pool per tier, the classic Celery bulkhead: the command line of each tier's worker.

Each tier has its own queue and its own ``celery worker`` processes, so a backlog in one
tier cannot take a process from another. Processes per worker, per tier, come from the
environment (the names docker-compose.yml uses):

* ``<TIER>_CONCURRENCY`` (``CRITICAL_CONCURRENCY``, ...): pool processes of that tier's
  worker; ``WORKER_CONCURRENCY`` applies to every tier that names none; otherwise
  :data:`DEFAULT_CONCURRENCY`.
* ``<TIER>_MIN_CONCURRENCY``: with it, the pool autoscales between the two
  (``--autoscale=<max>,<min>``; the seed's "min 10, max 50").
* ``WORKER_LOGLEVEL``: ``info`` unless set.

``python -m workers <tier>`` execs that worker; ``python -m workers --list`` prints every
tier's command line. Cluster-wide caps (the same tier names, shared by every worker
through Redis) are :func:`celery_reliable.bulkhead.tier_bulkheads`; this file is the
per-machine half.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from celery_reliable.bulkhead import check_tiers
from celery_reliable.errors import ConfigurationError

#: The tiers, most important first; each one's queue has the tier's name.
TIERS = ("critical", "standard", "optional")

#: Pool processes per worker of each tier when the environment names none.
DEFAULT_CONCURRENCY: dict[str, int] = {"critical": 4, "standard": 4, "optional": 2}

#: The Celery app every tier's worker runs.
APP = "workers.app"


@dataclass(frozen=True)
class TierWorker:
    """The worker of one tier.

    Attributes:
        tier: the tier's name (also its queue's).
        concurrency: pool processes (the most, when autoscaling).
        min_concurrency: the fewest pool processes when autoscaling, else ``None``.
        loglevel: the worker's log level.
        app: the Celery app module.
    """

    tier: str
    concurrency: int
    min_concurrency: int | None = None
    loglevel: str = "info"
    app: str = APP

    @property
    def queue(self) -> str:
        """The queue this tier's worker consumes (only this one)."""
        return self.tier

    @property
    def node(self) -> str:
        """The worker's node name (``%h`` is the host name, expanded by Celery)."""
        return f"{self.tier}@%h"

    def argv(self, *extra: str) -> list[str]:
        """The ``celery worker`` command line, starting with this Python, plus ``extra`` arguments."""
        pool = (
            [f"--autoscale={self.concurrency},{self.min_concurrency}"]
            if self.min_concurrency is not None
            else ["--concurrency", str(self.concurrency)]
        )
        return [sys.executable, "-m", "celery", "-A", self.app, "worker", "-Q", self.queue, "-n", self.node,
                *pool, "-l", self.loglevel, *extra]

    def command(self, *extra: str) -> str:
        """:meth:`argv` as one shell-quoted line."""
        return shlex.join(self.argv(*extra))


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(name, f"expected a positive whole number of processes, got {raw!r}") from None
    if value < 1:
        raise ConfigurationError(name, f"expected a positive whole number of processes, got {raw!r}")
    return value


def tier_workers(
    concurrency: Mapping[str, int] | None = None, env: Mapping[str, str] | None = None
) -> dict[str, TierWorker]:
    """The worker of every tier, from the environment.

    Args:
        concurrency: processes per tier when the environment names none (default
            :data:`DEFAULT_CONCURRENCY`); its keys are the tiers.
        env: the environment (default ``os.environ``).

    Raises:
        ConfigurationError: for a bad tier name or count, or an environment variable that
            is not a positive number, or a minimum above the maximum.
    """
    env = os.environ if env is None else env
    sizes = check_tiers(DEFAULT_CONCURRENCY if concurrency is None else concurrency, "concurrency")
    everyone = _env_int(env, "WORKER_CONCURRENCY")
    loglevel = env.get("WORKER_LOGLEVEL", "").strip() or "info"
    workers: dict[str, TierWorker] = {}
    for tier, default in sizes.items():
        variable = f"{tier.upper().replace('-', '_').replace('.', '_')}_CONCURRENCY"
        most = _env_int(env, variable) or everyone or default
        least = _env_int(env, variable.replace("_CONCURRENCY", "_MIN_CONCURRENCY"))
        if least is not None and least > most:
            raise ConfigurationError(
                variable.replace("_CONCURRENCY", "_MIN_CONCURRENCY"), f"{least} is above the tier's {most} processes"
            )
        workers[tier] = TierWorker(tier, most, least, loglevel)
    return workers


def exec_worker(tier: str, *extra: str, env: Mapping[str, str] | None = None) -> None:
    """Replace this process with the worker of ``tier`` (never returns).

    Raises:
        ConfigurationError: for an unknown tier or bad environment.
    """
    workers = tier_workers(env=env)
    if tier not in workers:
        raise ConfigurationError("tier", f"unknown tier {tier!r}; the tiers are {', '.join(workers)}")
    argv = workers[tier].argv(*extra)
    sys.stdout.flush()
    os.execv(argv[0], argv)
