"""docs/configuration.md is generated from the code and must match it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from celery_reliable.defaults import SETTINGS
from celery_reliable.options import RELIABLE_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date() -> None:
    gen = _generator()
    expected = gen.render()
    current = gen.OUTPUT.read_text() if gen.OUTPUT.exists() else ""
    assert current == expected, "docs/configuration.md is out of date: run python scripts/gen_config_reference.py"


def test_reference_names_every_setting_option_and_command() -> None:
    text = _generator().render()
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in text
    for option in RELIABLE_OPTIONS:
        assert f"### `{option}`" in text
    for command in ("reliable", "reliable migrate", "reliable status", "reliable dlq ls", "reliable dlq replay"):
        assert f"### `celery -A proj {command}`" in text
