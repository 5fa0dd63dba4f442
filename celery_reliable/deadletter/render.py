"""Dead letters as text for the terminal (the ``--json`` forms print :func:`codec.as_dict`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .codec import as_dict
from .record import DeadLetter
from .replay import ReplayResult

#: Fields ``dlq ls --json`` leaves out (``dlq show`` prints them).
BULKY = ("traceback", "raw_body", "history", "headers")


def _one_line(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(letter: DeadLetter) -> str:
    return letter.created_at.strftime("%Y-%m-%d %H:%M:%S") if letter.created_at else "-"


def summary(letter: DeadLetter) -> dict[str, Any]:
    """``letter`` as JSON values without its bulky fields."""
    return {k: v for k, v in as_dict(letter).items() if k not in BULKY}


def table(letters: list[DeadLetter]) -> Iterable[str]:
    """One line per letter under a header."""
    yield f"{'ID':>7}  {'CREATED (UTC)':19}  {'REASON':16}  {'ATTEMPTS':>8}  {'REPLAYED':>8}  TASK / EXCEPTION"
    for letter in letters:
        exc = f"{letter.exception_type or ''}: {letter.exception_message or ''}".strip(": ")
        yield (
            f"{letter.id:>7}  {_when(letter):19}  {letter.reason:16}  {letter.attempts:>8}  "
            f"{letter.replay_count:>8}  {letter.task_name or '<unknown>'}  {_one_line(exc, 80)}"
        )


def details(letter: DeadLetter) -> Iterable[str]:
    """Every field of ``letter``, the traceback and raw body last."""
    record = as_dict(letter)
    record = {"id": record.pop("id"), **record}
    long_fields = ("args", "kwargs", "headers", "history", "traceback", "raw_body")
    for name, value in record.items():
        if name not in long_fields:
            yield f"{name:20} {'-' if value is None else value}"
    for name in ("args", "kwargs", "headers"):
        yield f"{name:20} {json.dumps(record[name], sort_keys=True, ensure_ascii=False)}"
    yield "history:"
    for entry in letter.history:
        yield f"  #{entry.get('attempt')}  {entry.get('at')}  {entry.get('exception_type')}: {entry.get('message')}"
    yield "traceback:"
    yield from (f"  {line}" for line in (letter.traceback or "-").rstrip("\n").splitlines())
    if letter.raw_body is not None:
        yield f"raw_body ({letter.raw_body_encoding}):"
        yield f"  {letter.raw_body!s}"


def replay_lines(results: list[ReplayResult]) -> Iterable[str]:
    """One line per replayed letter and a tally."""
    tally: dict[str, int] = {}
    for r in results:
        tally[r.status] = tally.get(r.status, 0) + 1
        line = f"#{r.letter_id:<7} {r.status:17} {r.task_id or '-':36}  {r.task_name or '<unknown>'}  {r.detail or ''}"
        yield line.rstrip()
    yield ", ".join(f"{status} {n}" for status, n in sorted(tally.items())) or "no dead letters matched"
