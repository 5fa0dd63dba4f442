"""``python -m examples.demo``: see :mod:`examples.demo.run`."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
