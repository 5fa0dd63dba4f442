"""``reliable status`` and ``reliable health``: gathering what celery-reliable holds, and checking its ground.

- :func:`gather`: the status report, one section per store, each surviving its backend
  being down (``{"unavailable": <reason>}``), secrets masked;
- :func:`render_text`: the screen for that report;
- :func:`checks`: liveness and readiness checks with short timeouts.
"""

from __future__ import annotations

from .gather import gather
from .health import Check, checks
from .render import render_text

__all__ = ["Check", "checks", "gather", "render_text"]
