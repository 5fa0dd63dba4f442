"""Backoff with jitter: the four ways :class:`~.policy.RetryPolicy` spreads its retries.

With ``ceiling(n) = min(cap, base * multiplier**n)`` for retry ``n`` (0 for the first):

- ``"full"``: uniform in ``[0, ceiling(n)]``, the choice of AWS's "Exponential Backoff
  and Jitter": the least total work and the fewest collisions among many clients;
- ``"equal"``: ``ceiling(n) / 2`` plus uniform in ``[0, ceiling(n) / 2]``, never much
  shorter than the plain backoff;
- ``"decorrelated"``: ``min(cap, uniform(base, 3 * previous))``, each delay drawn from the
  one before (``multiplier`` is not used);
- ``"none"``: exactly ``ceiling(n)``.

``random`` reseeds itself in each forked child (Python registers that at fork), so the
prefork children of a worker do not draw the same delays.
"""

from __future__ import annotations

import math
from typing import Protocol


class Uniform(Protocol):
    """A source of randomness: ``random``, or a ``random.Random(seed)`` for tests."""

    def uniform(self, a: float, b: float) -> float:
        """A float in ``[a, b]``."""
        ...


#: The accepted values of ``jitter``.
JITTERS = ("full", "equal", "decorrelated", "none")


def ceiling(n: int, base: float, cap: float, multiplier: float) -> float:
    """``min(cap, base * multiplier**n)``, without overflowing for a large ``n``.

    Args:
        n: the retry's number, 0 for the first.
        base: the first delay's ceiling, in seconds (positive).
        cap: the longest delay, in seconds (at least ``base``).
        multiplier: growth per retry (at least 1).

    Returns:
        Seconds.
    """
    if multiplier == 1.0 or n <= 0:
        return min(cap, base)
    if n >= math.log(cap / base, multiplier):
        return cap
    return min(cap, base * multiplier**n)


def draw(
    jitter: str,
    n: int,
    base: float,
    cap: float,
    multiplier: float,
    previous: float | None,
    rng: Uniform,
) -> float:
    """The delay before retry ``n`` under ``jitter``, in seconds.

    Args:
        jitter: one of :data:`JITTERS`.
        n: the retry's number, 0 for the first.
        base: see :func:`ceiling`.
        cap: see :func:`ceiling`.
        multiplier: see :func:`ceiling`.
        previous: the delay before the previous retry (decorrelated only); when unknown,
            ``ceiling(n - 1)`` stands in, so a caller without state still backs off.
        rng: the source of randomness.

    Returns:
        Seconds, in ``[0, cap]``.

    Raises:
        ValueError: for an unknown ``jitter`` (RetryPolicy checks it first).
    """
    top = ceiling(n, base, cap, multiplier)
    if jitter == "full":
        return rng.uniform(0.0, top)
    if jitter == "equal":
        return top / 2 + rng.uniform(0.0, top / 2)
    if jitter == "none":
        return top
    if jitter == "decorrelated":
        if previous is None or not math.isfinite(previous):
            previous = ceiling(n - 1, base, cap, multiplier) if n > 0 else base
        return min(cap, rng.uniform(base, max(base, 3 * previous)))
    raise ValueError(f"unknown jitter {jitter!r}")
