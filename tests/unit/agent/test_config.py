"""agent.toml: defaults, overrides, and typos refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import AgentError


def test_file_values_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('http_port = 9000\nunix_socket = false\nshutdown_timeout_s = 3\nlog_level = "DEBUG"\n')
    config = AgentConfig.from_toml(path)
    assert (config.http_port, config.unix_socket, config.shutdown_timeout_s) == (9000, False, 3)
    assert config.with_overrides(http_port=0, mqtt=None).http_port == 0
    assert config.with_overrides(mqtt=None).mqtt is True


@pytest.mark.parametrize(("text", "words"), [
    ("htp_port = 1", "unknown key 'htp_port'"),
    ('http_port = "80"', "http_port = '80' should be a int"),
    ("mqtt = 1", "mqtt = 1 should be a bool"),
    ("http_port = 70000", "is not a TCP port"),
    ("max_rows = 0", "must be positive"),
    ("http_port = ", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text + "\n")
    with pytest.raises(AgentError) as caught:
        AgentConfig.from_toml(path)
    assert words in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="does not exist"):
        AgentConfig.from_toml(tmp_path / "nope.toml")


def test_probation_settings_come_from_agent_toml_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.update_service import probation_config

    config = AgentConfig.from_dict({"probation_s": 5.0, "probation_min_requests": 3, "probation_max_restarts": 2})
    monkeypatch.delenv("EDGEFLEET_PROBATION_S", raising=False)
    monkeypatch.delenv("EDGEFLEET_PROBATION_MIN_REQUESTS", raising=False)
    probation = probation_config(config)
    assert (probation.duration_s, probation.min_requests, probation.max_restarts) == (5.0, 3, 2)
    monkeypatch.setenv("EDGEFLEET_PROBATION_S", "1")
    assert probation_config(config).duration_s == 1.0
    assert probation_config(config).max_restarts == 2
    with pytest.raises(AgentError, match="probation_max_restarts"):
        AgentConfig.from_dict({"probation_max_restarts": 0})
