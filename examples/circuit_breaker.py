"""A circuit breaker shared through Redis: the seed's quick start, then the whole state machine.

Needs a Redis (``$REDIS_URL``, else ``redis://127.0.0.1:6379/0``); it only touches the
keys of the breakers it names (``reliable:cb:{...}``). From the repository root::

    python -m examples.circuit_breaker

1. The seed's quick start, as written: ``@circuit_breaker(failure_threshold=5,
   recovery_timeout=30)`` over ``@retry(max_attempts=3, base_delay=1.0)`` on an async
   function. The API is down: after 5 failed calls (each retried) the breaker opens, and
   the 6th call fails at once with ``CircuitOpen``: no request, no retry.
2. ``CircuitBreaker`` as a context manager with the seed's other parameters (50 % of 10
   calls) and a 1 s recovery: it opens, lets one probe through, and closes again. Every
   transition is printed by a receiver of ``breaker_state_changed``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import redis
import redis.asyncio

from celery_reliable.breaker import CircuitBreaker, StateChange, breaker_state_changed, circuit_breaker
from celery_reliable.errors import CircuitOpen
from celery_reliable.retries import retry

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_URL", URL)  # what a breaker without client= or url= uses


def show(sender: Any, change: StateChange, **kwargs: Any) -> None:
    """Print each transition (one process makes it, and announces it once)."""
    print(f"    [{change.name}] {change.old.value} -> {change.new.value} ({change.reason})")


breaker_state_changed.connect(show, weak=False)

api_up = False
requests_sent = 0


# -- 1. the seed's quick start ----------------------------------------------------------


@circuit_breaker(failure_threshold=5, recovery_timeout=30)
@retry(max_attempts=3, base_delay=1.0)
async def call_external_api() -> str:
    global requests_sent
    requests_sent += 1
    await asyncio.sleep(0.01)  # the network
    if not api_up:
        raise ConnectionError("payment API unreachable")
    return "ok"


async def quick_start() -> None:
    breaker: CircuitBreaker = call_external_api.breaker  # type: ignore[attr-defined]
    await breaker.areset()  # a fresh start when the example runs again
    print(f"1. @circuit_breaker(failure_threshold=5, recovery_timeout=30) named {breaker.name!r}")
    for call in range(1, 7):
        start = time.monotonic()
        try:
            await call_external_api()
        except ConnectionError as exc:
            print(f"  call {call}: {exc!r} after {time.monotonic() - start:.1f}s (3 attempts)")
        except CircuitOpen as exc:
            print(f"  call {call}: {exc} (after {time.monotonic() - start:.3f}s, nothing sent)")
    state = await breaker.astate()
    print(f"  requests sent to the API: {requests_sent}; breaker {state.state.value}, {state.retry_after:.0f}s to go")
    await breaker.areset()


# -- 2. the state machine ----------------------------------------------------------------


def state_machine() -> None:
    global api_up
    client = redis.Redis.from_url(URL)
    breaker = CircuitBreaker("inventory", client, failure_rate_threshold=0.5, window=10, recovery_timeout=1)
    breaker.reset()
    print("\n2. CircuitBreaker('inventory', failure_rate_threshold=0.5, window=10, recovery_timeout=1)")

    def inventory() -> str:
        if not api_up:
            raise TimeoutError("inventory service timed out")
        return "in stock"

    api_up = False
    outcomes = []
    for _ in range(12):
        try:
            with breaker:
                inventory()
        except TimeoutError:
            outcomes.append("failed")
        except CircuitOpen as exc:
            outcomes.append(f"refused (retry in {exc.retry_after:.1f}s)")
    print(f"  12 calls while it is down: {outcomes.count('failed')} failed, then {outcomes[-1]} x{12 - 10}")
    api_up = True
    time.sleep(1.05)  # the recovery timeout, on the Redis server's clock
    print(f"  after 1 s, a probe: {breaker.call(inventory)!r}")
    state = breaker.state()
    print(f"  breaker {state.state.value}, generation {state.generation}")
    client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="    log %(levelname)s: %(message)s")
    asyncio.run(quick_start())
    state_machine()
