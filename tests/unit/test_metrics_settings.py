"""The metrics settings and the CLI command (no backend is read)."""

from __future__ import annotations

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ConfigurationError, get_config
from celery_reliable.bootstep import _metrics_server
from celery_reliable.cli import reliable


def _app(**conf: object) -> Celery:
    app = Celery("metrics", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.update(conf)
    return app


def test_metrics_are_off_by_default_and_listen_on_localhost() -> None:
    cfg = get_config(_app())
    assert cfg.metrics_port is None and cfg.metrics_addr == "127.0.0.1"
    assert _metrics_server(_app(), cfg) is None


def test_port_and_address_are_read() -> None:
    cfg = get_config(_app(reliable_metrics_port=9808, reliable_metrics_addr="0.0.0.0"))
    assert (cfg.metrics_port, cfg.metrics_addr) == (9808, "0.0.0.0")


@pytest.mark.parametrize("port", ["9808", 0, True])
def test_a_wrong_port_names_the_setting(port: object) -> None:
    with pytest.raises(ConfigurationError, match="reliable_metrics_port"):
        get_config(_app(reliable_metrics_port=port))


def test_a_port_out_of_range_stops_the_worker_before_anything_is_prepared() -> None:
    app = _app(reliable_metrics_port=70000)
    with pytest.raises(ConfigurationError, match="expected a TCP port"):
        _metrics_server(app, get_config(app))


def test_the_cli_command_is_in_the_group() -> None:
    result = CliRunner().invoke(reliable, ["metrics", "--help"])
    assert result.exit_code == 0 and "--serve" in result.output
