"""The mosquitto-http recipe: the mosquitto.conf lines and the plugin source the package ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.broker.mosquitto_http import conf_lines
from fleet_server.broker.plugin import compile_command, source
from fleet_server.errors import BrokerError


def test_conf_lines_load_the_plugin_with_the_token_from_a_file() -> None:
    lines = conf_lines("/opt/edgefleet_auth.so", "http://fleet:8080/", token_file="/etc/mosquitto/edgefleet-token")
    assert lines[:4] == ["plugin /opt/edgefleet_auth.so", "plugin_opt_url http://fleet:8080/api/v1/broker/auth",
                         "plugin_opt_token_file /etc/mosquitto/edgefleet-token", "plugin_opt_timeout_ms 2000"]
    assert "allow_anonymous false" in lines


@pytest.mark.parametrize("tokens", [{}, {"token_file": "/t", "token": "x" * 20}])
def test_conf_lines_need_exactly_one_token(tokens: dict[str, str]) -> None:
    with pytest.raises(BrokerError, match="token") as refused:
        conf_lines("/p.so", "http://fleet:8080", **tokens)  # type: ignore[arg-type]
    assert "broker-auth-token" in (refused.value.fix or "")


def test_the_package_ships_the_plugin_source_and_builds_it_with_libcurl() -> None:
    src = source()
    assert src.is_file() and "mosquitto_plugin_init" in src.read_text()
    command = compile_command(src, Path("/tmp/x.so"), "gcc")
    assert command[0] == "gcc" and "-shared" in command and command[-1] == "-lcurl"
