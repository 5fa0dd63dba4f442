"""How long a failed call asks us to wait: ``exc.retry_after`` or a ``Retry-After`` header.

RFC 9110 §10.2.3 gives ``Retry-After`` two forms, both read here: ``delay-seconds``
(``"120"``) and an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, or the obsolete
RFC 850 and asctime forms a recipient must still accept). A date is turned into seconds
with this machine's clock; a date in the past means "now" (0 seconds).
"""

from __future__ import annotations

import math
import re
import time
from datetime import timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from .conditions import safe_getattr

_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: object, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` if it cannot be read.

    Args:
        value: the header's value (str or bytes), or a number of seconds.
        now: the current Unix time for an HTTP-date (default: ``time.time()``).

    Returns:
        Zero or more seconds, or ``None`` for a missing, negative or unreadable value.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _header(headers: Any) -> Any:
    for name in ("Retry-After", "retry-after"):
        try:
            found = headers.get(name)
        except Exception:  # not a mapping after all
            return None
        if found is not None:
            return found
    try:  # a plain dict with another spelling
        return next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    except Exception:
        return None


def retry_after_of(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds ``exc`` asks us to wait, or ``None`` if it says nothing.

    Reads, in order: ``exc.retry_after`` (a number of seconds, a timedelta or a header
    value: our own ``KeyInProgress`` and ``LockNotAcquired`` carry one), then the
    ``Retry-After`` header of ``exc.response.headers`` (requests, httpx) or
    ``exc.headers`` (urllib, aiohttp).

    Args:
        exc: the error.
        now: the current Unix time, for HTTP-dates (default: ``time.time()``).

    Returns:
        Zero or more seconds, or ``None``.
    """
    seconds = parse_retry_after(safe_getattr(exc, "retry_after"), now)
    if seconds is not None:
        return seconds
    for headers in (safe_getattr(safe_getattr(exc, "response"), "headers"), safe_getattr(exc, "headers")):
        if headers is not None:
            seconds = parse_retry_after(_header(headers), now)
            if seconds is not None:
                return seconds
    return None
