"""ServerConfig precedence (flags > env > file > defaults) and refusals that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.config import ServerConfig, load_config
from fleet_server.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config({}, env={})
    assert config.data_dir == tmp_path / "edgefleet-data"
    assert (config.host, config.port, config.broker_url) == ("127.0.0.1", 8080, None)
    assert config.database == f"sqlite:///{tmp_path}/edgefleet-data/edgefleet.sqlite"
    assert config.server_url == "http://127.0.0.1:8080"
    assert config.report_quiet_seconds == 60.0


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 7000\nhost = "0.0.0.0"\nbroker_url = "mqtt://file:1883"\n')
    env = {"EDGEFLEET_PORT": "7100", "EDGEFLEET_BROKER_URL": "mqtts://env:8883"}
    config = load_config({"port": 7200, "host": None}, env=env, config_file=path)
    assert config.port == 7200  # flag
    assert config.broker_url == "mqtts://env:8883"  # env over file
    assert config.host == "0.0.0.0"  # file (the flag was not given)
    assert config.server_url == "http://127.0.0.1:7200"  # a wildcard bind is not a URL devices can use


def test_server_section_and_config_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\npublic_url = "https://fleet.example.com"\nmax_upload_bytes = 1024\n')
    config = load_config({}, env={"EDGEFLEET_CONFIG": str(path)})
    assert config.server_url == "https://fleet.example.com"
    assert config.max_upload_bytes == 1024


@pytest.mark.parametrize(("text", "env", "match"), [
    ("prot = 1\n", {}, "unknown key.*prot"),
    ("", {"EDGEFLEET_PORT": "eighty"}, r"\$EDGEFLEET_PORT.*port"),
    ('broker_url = "http://x"\n', {}, "broker_url.*not an MQTT URL"),
    ("port = 70000\n", {}, "port 70000 is out of range"),
    ("enrollment_ttl_seconds = 5\n", {}, "enrollment_ttl_seconds"),
    ("port = [\n", {}, "not valid TOML"),
    ("report_quiet_seconds = -1\n", {}, "report_quiet_seconds -1.0 is negative"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config({}, env=env, config_file=write(tmp_path, text))


def test_config_is_frozen() -> None:
    config = ServerConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_private_targets_from_file_env_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("private_targets = true\n")
    assert load_config(env={}).private_targets is False
    assert load_config(env={}, config_file=config).private_targets is True
    assert load_config(env={"EDGEFLEET_PRIVATE_TARGETS": "no"}, config_file=config).private_targets is False
    assert load_config({"private_targets": True}, env={"EDGEFLEET_PRIVATE_TARGETS": "false"}).private_targets is True
    with pytest.raises(ConfigError, match="private_targets = 'maybe' is not a boolean"):
        load_config(env={"EDGEFLEET_PRIVATE_TARGETS": "maybe"})
    config.write_text('private_targets = "yes please"\n')
    with pytest.raises(ConfigError, match="is not a boolean"):
        load_config(env={}, config_file=config)


def test_broker_lists_and_the_accounts_backend(tmp_path: Path) -> None:
    from fleet_server.context import ServerContext

    config = load_config({"data_dir": str(tmp_path), "broker_url": "mqtt://srv:pw@a:1883,b:1884"}, env={})
    assert config.accounts == "unmanaged"
    context = ServerContext(config)
    # Devices are told every node, in order, and never the server's own login.
    assert context.broker_public_urls == ["mqtt://a:1883", "mqtt://b:1884"]
    assert context.broker_public_url == "mqtt://a:1883"
    assert load_config({"data_dir": str(tmp_path), "mosquitto_dir": str(tmp_path)}, env={}).accounts == "mosquitto-files"


@pytest.mark.parametrize(("values", "named"), [
    ({"broker_url": "mqtt://a:1,b:x"}, "b:x"),
    ({"broker_accounts": "ldap"}, "broker_accounts"),
    ({"broker_accounts": "mosquitto-dynsec"}, "needs broker_url"),
    ({"broker_accounts": "mosquitto-files"}, "needs mosquitto_dir"),
])
def test_bad_broker_settings_are_refused_naming_them(tmp_path: Path, values: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"data_dir": str(tmp_path), **values}, env={})
    assert named in caught.value.message
