"""Decision: what a limiter answered for one request, and the HTTP headers that say it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    """One limiter's answer for one request; truthy when the request is allowed.

    Times are seconds, measured on the Redis server's clock by the script that decided.

    Attributes:
        allowed: whether the request may go ahead (its cost was taken).
        limit: the most requests the limiter admits at once (capacity, limit or burst).
        remaining: requests that could still be admitted right now, after this one.
        reset_after: seconds until the limiter is back to its full ``limit`` if nothing
            else is admitted.
        retry_after: seconds until this request would be admitted; 0 when allowed.
        at: the server time of the decision (Unix seconds, microsecond precision).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    at: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_reply(cls, reply: list[int] | bytes | str, limit: int) -> Decision:
        """Build a decision from a ``ratelimit_*.lua`` reply.

        Args:
            reply: ``allowed remaining reset_after_us retry_after_us now_us``, five integers
                in one status line, as the scripts send them (bytes, or str from a client
                with ``decode_responses=True``), or the same five as a list of ints.
            limit: the limiter's ``limit``.

        Returns:
            The decision, with microseconds turned into seconds.
        """
        if isinstance(reply, (bytes, str)):
            # One status line is cheaper for redis-py to read than an array of five integers.
            allowed, remaining, reset_us, retry_us, now_us = map(int, reply.split())
        else:
            allowed, remaining, reset_us, retry_us, now_us = reply
        if not 0 <= remaining <= limit:
            remaining = max(0, min(limit, remaining))
        ok = allowed == 1
        retry_after = 0.0 if ok or retry_us <= 0 else retry_us / 1_000_000
        return cls(ok, limit, remaining, max(0, reset_us) / 1_000_000, retry_after, now_us / 1_000_000)

    def headers(self) -> dict[str, str]:
        """The response headers of this decision, all in whole seconds rounded up.

        ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` follow the IETF
        draft (draft-ietf-httpapi-ratelimit-headers); ``Retry-After`` (RFC 6585, with a
        429 status) comes only with a denial and is at least 1.

        Returns:
            Header names and values, ready for any web framework's response.
        """
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers
