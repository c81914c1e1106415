"""Where the admin CLI finds its server and token: flags > environment > ~/.config/edgefleet/cli.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.cli.client import DEFAULT_SERVER, resolve_client_settings
from fleet_server.errors import ClientError


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "cli.toml"
    file.write_text('server = "http://file:8080"\ntoken = "file-token"\n')
    assert resolve_client_settings(env={}, config_file=file).token == "file-token"
    env = {"EDGEFLEET_TOKEN": "env-token", "EDGEFLEET_SERVER": "http://env:8080/"}
    settings = resolve_client_settings(env=env, config_file=file)
    assert (settings.server, settings.token) == ("http://env:8080", "env-token")
    settings = resolve_client_settings("https://flag", "flag-token", env=env, config_file=file)
    assert (settings.server, settings.token) == ("https://flag", "flag-token")


def test_defaults_without_any_setting(tmp_path: Path) -> None:
    settings = resolve_client_settings(env={}, config_file=tmp_path / "missing.toml")
    assert (settings.server, settings.token) == (DEFAULT_SERVER, None)


def test_bad_settings_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="not http"):
        resolve_client_settings("ftp://x", env={}, config_file=tmp_path / "missing.toml")
    broken = tmp_path / "cli.toml"
    broken.write_text("token = \n")
    with pytest.raises(ClientError, match="not valid TOML"):
        resolve_client_settings(env={}, config_file=broken)
