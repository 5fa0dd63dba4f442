"""``python -m workers <tier> [celery worker options]``: exec the worker of one tier.

``python -m workers --list`` prints the command line of every tier instead.
"""

from __future__ import annotations

import sys

from celery_reliable.errors import ConfigurationError

from .tiers import exec_worker, tier_workers

USAGE = "usage: python -m workers <tier> [celery worker options...] | --list"


def main(argv: list[str]) -> int:
    """Run the command line ``argv`` (without the program name); returns an exit status on error."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("tiers:", ", ".join(tier_workers()))
        return 0 if argv else 2
    try:
        if argv[0] == "--list":
            for worker in tier_workers().values():
                print(worker.command())
            return 0
        exec_worker(argv[0], *argv[1:])
    except ConfigurationError as exc:
        print(f"python -m workers: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - exec_worker does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
