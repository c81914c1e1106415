"""The daemon's model loading, reported document and commands, without starting its loop."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.daemon import Daemon, open_daemon
from agent.errors import StateError
from agent.install import install_bundle
from agent.state import StateDir
from edgefleet.profiles import Profile
from tests.unit.agent.models import BundleMaker


@pytest.fixture
def daemon(state: StateDir, profile: Profile) -> Daemon:
    return Daemon(state, AgentConfig(mqtt=False), profile=profile)


def test_reload_serves_every_active_model(daemon: Daemon, state: StateDir, profile: Profile,
                                          linear_bundle: BundleMaker) -> None:
    install_bundle(state, linear_bundle(), profile, latency_runs=3)
    install_bundle(state, linear_bundle(name="other"), profile, latency_runs=3)
    assert daemon.reload() == {"models": {"iris": "1.0.0", "other": "1.0.0"}, "failures": {}}
    assert daemon.serving.names() == ["iris", "other"]
    first = daemon.serving.get("iris")
    install_bundle(state, linear_bundle("1.1.0", seed=1), profile, latency_runs=3)
    daemon.reload()
    session = daemon.serving.get("iris")
    assert session is not first and session is not None and session.manifest.version == "1.1.0"
    assert daemon.serving.get("other") is not None


def test_a_tampered_active_slot_is_not_served_and_the_failure_is_named(daemon: Daemon, state: StateDir,
                                                                       profile: Profile, linear_bundle: BundleMaker,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    result = install_bundle(state, linear_bundle(), profile, latency_runs=3)
    daemon.reload()
    result.slot.model_path.write_bytes(b"tampered")
    install_bundle(state, linear_bundle(name="other"), profile, latency_runs=3)
    daemon.serving.remove("iris")  # as after a restart
    with caplog.at_level(logging.ERROR, logger="agent.daemon"):
        outcome = daemon.reload()
    assert "iris" not in outcome["models"] and "does not match its sha256" in outcome["failures"]["iris"]
    assert daemon.serving.names() == ["other"]  # the other model still serves
    assert any("cannot serve model iris" in r.getMessage() for r in caplog.records)
    assert daemon.status()["failures"]["iris"]


def test_reported_follows_the_contract(daemon: Daemon, state: StateDir, profile: Profile,
                                       linear_bundle: BundleMaker) -> None:
    result = install_bundle(state, linear_bundle(), profile, latency_runs=3)
    daemon.reload()
    assert daemon.reported() == {"agent_version": "0.1.0", "profile": "generic-x86_64",
                                 "models": {"iris": {"version": "1.0.0", "sha256": result.slot.sha256}},
                                 "update": {"state": "idle"}, "assignment_counter": 0}
    # the counter of the assignment it holds (assignment.json): the server re-sends `desired` when behind
    state.assignment_file.write_text(json.dumps({"counter": 7, "envelope": {}, "accepted_at": 0}))
    assert daemon.reported()["assignment_counter"] == 7
    state.assignment_file.write_text("{torn")
    assert daemon.reported()["assignment_counter"] == 0
    # update.json is the machine plus its flat report (agent.updater); `reported.update` is that report.
    report = {"state": "rolled_back", "model": "iris", "version": "2.0.0", "counter": 4, "rollout_id": "ro-1",
              "reason": "probation_failed"}
    state.update_file.write_text(json.dumps({**report, "machine": {}}))
    assert daemon.reported()["update"] == report
    state.update_file.write_text(json.dumps({"machine": {}}))
    assert daemon.reported()["update"] == {"state": "idle"}
    state.update_file.write_text("{torn")
    assert daemon.reported()["update"] == {"state": "idle"}


def test_log_level_command(daemon: Daemon) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        daemon._on_command({"command": "log_level", "args": {"level": "debug"}})
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def test_a_daemon_needs_a_profile(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="--profile NAME"):
        open_daemon(str(tmp_path), None)
