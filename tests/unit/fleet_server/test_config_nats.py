"""The NATS backend's settings (docs/deployment.md "Scaling out"): chosen in the config, MQTT alone by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.config import load_config
from fleet_server.errors import ConfigError


def test_default_is_mqtt_alone(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path}, env={})
    assert config.nats_url is None and config.nats_stream_replicas == 3


def test_nats_backend_from_the_environment(tmp_path: Path) -> None:
    config = load_config({"data_dir": tmp_path}, env={
        "EDGEFLEET_NATS_URL": "nats://10.0.0.1:4222,nats://10.0.0.2:4222", "EDGEFLEET_BROKER_URL": "mqtt://10.0.0.1:1883",
        "EDGEFLEET_NATS_STREAM_REPLICAS": "1"})
    assert config.nats_url == "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
    assert config.nats_stream_replicas == 1


@pytest.mark.parametrize(("env", "match"), [
    ({"EDGEFLEET_NATS_URL": "mqtt://10.0.0.1:1883", "EDGEFLEET_BROKER_URL": "mqtt://h:1883"}, "nats_url"),
    ({"EDGEFLEET_NATS_URL": "nats://10.0.0.1:4222"}, "broker_url is not"),
    ({"EDGEFLEET_NATS_STREAM_REPLICAS": "7"}, "nats_stream_replicas"),
    ({"EDGEFLEET_NATS_CALLOUT_USER": "auth"}, "go together"),
    ({"EDGEFLEET_NATS_SYSTEM_USER": "sys"}, "go together"),
    ({"EDGEFLEET_NATS_CALLOUT_USER": "auth", "EDGEFLEET_NATS_CALLOUT_PASSWORD": "pw"}, "nats_url is not"),
])
def test_bad_nats_settings_are_named(tmp_path: Path, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config({"data_dir": tmp_path}, env=env)
