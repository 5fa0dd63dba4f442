"""docker-compose.yml, read as data: no Docker engine runs here, so its wiring is checked by reading.

The file was also validated against the Compose specification's JSON schema
(compose-spec/compose-spec, schema/compose-spec.json); these checks hold what the schema
cannot see: that commands name modules that exist, that every tier has a worker, that
the start order and the health checks are the ones the deployment relies on.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.tiers import TIERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def test_every_tier_has_a_worker_that_consumes_its_queue(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for tier in TIERS:
        worker = services[f"worker-{tier}"]
        assert worker["command"] == ["python", "-m", "workers", tier]
        assert f"{tier.upper()}_CONCURRENCY" in worker["environment"]
        assert worker["stop_grace_period"]  # warm shutdown, not an immediate SIGKILL
        assert f"{tier}@$$HOSTNAME" in worker["healthcheck"]["test"][1]  # its own node, by name
    assert not {name for name in services if name.startswith("worker-")} - {f"worker-{t}" for t in TIERS}


def test_commands_name_modules_that_exist(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        command = service.get("command")
        if command is None:
            continue
        text = " ".join(command) if isinstance(command, list) else command
        for module in re.findall(r"(?:-A|-m)\s+([\w.]+)", text):
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_start_order_waits_for_healthy_stores_and_the_migration(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no check"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in [f"worker-{t}" for t in TIERS] + ["beat"]:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_long_running_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if name == "migrate":
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_redis_keeps_its_data_and_never_evicts(compose: dict[str, Any]) -> None:
    command = _services(compose)["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data" in compose["volumes"] and "postgres-data" in compose["volumes"]
