"""Retries that help: ``@retry`` on an async function, and what a RetryPolicy decides.

From the repository root (no Celery, Redis or network needed)::

    python -m examples.retry

First a flaky "payment API" fails twice with a 503 and then answers; ``@retry`` sleeps a
jittered, growing delay between attempts. Then the same API answers 401: retrying
cannot fix a bad credential, so it fails at once. Last, ``RetryPolicy.classify`` on a
few errors shows the decision a worker would take (retry after how long, or
dead-letter, and why).
"""

from __future__ import annotations

import asyncio
import random
import time

from celery_reliable.retries import RetryPolicy, retry


class ApiError(Exception):
    """What an HTTP client raises: the status and headers of the response."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = headers or {}


class PaymentApi:
    """A fake API that answers with the given statuses in turn (200 = success)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)

    async def charge(self, order_id: int) -> str:
        await asyncio.sleep(0.01)  # the network
        status = self.statuses.pop(0)
        if status != 200:
            raise ApiError(status)
        return f"order {order_id} charged"


def show_retry(exc: BaseException, attempt: int, delay: float) -> None:
    print(f"    attempt {attempt} failed with {exc}; retrying in {delay * 1000:.0f} ms")


async def calls() -> None:
    api = PaymentApi(503, 503, 200, 401)

    @retry(max_attempts=4, base_delay=0.1, on_retry=show_retry, rng=random.Random(4))
    async def charge(order_id: int) -> str:
        return await api.charge(order_id)

    print("1. a dependency that fails twice, then answers:")
    started = time.monotonic()
    print(f"    -> {await charge(42)} after {time.monotonic() - started:.2f}s")

    print("2. a 401 is never retried:")
    try:
        await charge(43)
    except ApiError as exc:
        print(f"    -> raised {exc} at once; {getattr(exc, '__notes__', [''])[0]}")


def decisions() -> None:
    policy = RetryPolicy(max_attempts=5, base=0.1, cap=30.0)
    print(f"3. {policy}.classify(...):")
    cases: list[tuple[BaseException, int]] = [
        (ConnectionResetError("reset by peer"), 1),
        (ApiError(503), 3),
        (ApiError(429, {"Retry-After": "120"}), 2),
        (ApiError(503, {"Retry-After": "7200"}), 1),
        (ApiError(401), 1),
        (TimeoutError("read timed out"), 5),
    ]
    for exc, attempt in cases:
        d = policy.classify(exc, attempt, rng=random.Random(attempt))
        wait = f" in {d.delay:.3f}s" if d.delay is not None else ""
        print(f"    {type(exc).__name__}({exc}) on attempt {attempt}: {d.action}{wait} ({d.reason}: {d.detail})")


if __name__ == "__main__":
    asyncio.run(calls())
    decisions()
