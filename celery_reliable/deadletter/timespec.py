"""Durations and points in time as people type them: ``90``, ``15m``, ``1h30m``, ``7d``, ``2026-11-01``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import click

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """A duration: seconds (``90``) or amounts with units ``s m h d w`` (``1h30m``, ``7d``).

    Raises:
        ValueError: for anything else.
    """
    spec = text.strip().lower()
    try:
        seconds = float(spec)
    except ValueError:
        if not _WHOLE.fullmatch(spec):
            raise ValueError(
                f"{text!r} is not a duration; use seconds or a number with a unit s, m, h, d or w (30d, 1h30m)"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(spec))
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration of zero or more seconds")
    return timedelta(seconds=seconds)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time: a duration ago (``1h``, ``7d``) or an ISO 8601 date or datetime (UTC if no zone).

    Raises:
        ValueError: for anything else.
    """
    spec = text.strip()
    try:
        return (now or datetime.now(timezone.utc)) - parse_duration(spec)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(spec[:-1] + "+00:00" if spec.endswith(("Z", "z")) else spec)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (1h, 7d) nor an ISO 8601 date (2026-11-01)") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


class DurationParam(click.ParamType):
    """A click parameter parsed by :func:`parse_duration`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        """``value`` as a timedelta; a usage error naming the option otherwise."""
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SinceParam(click.ParamType):
    """A click parameter parsed by :func:`parse_since`."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        """``value`` as an aware UTC datetime; a usage error naming the option otherwise."""
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
