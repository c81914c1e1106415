"""`edgefleet simulate` as a user runs it: its own Mosquitto and server, injected faults, a report."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.support import edgefleet, last_json_line
from tests.support.shared import locked, shared_dir

pytestmark = pytest.mark.mosquitto


def data_dir(tmp_path: Path) -> str:
    """A --data-dir holding the models an earlier run of the simulator converted, which it reuses.

    These tests are about faults, rollouts and messages: training and converting the same digits
    MLP again in each would prove nothing new (the demo's story converts from scratch). The models
    are converted once per test run, for every worker, with the simulator's own targets.
    """
    from simulation.bundles import DemoModels
    from simulation.simulate import (
        DEFAULT_PROFILE_MIX,
        MODEL_VERSION,
        model_targets,
        parse_profile_mix,
    )

    shared = shared_dir() or Path(tempfile.mkdtemp(prefix="edgefleet-simulate-models-"))
    models = shared / "simulate-models"
    with locked(shared / "simulate-models.lock"):
        made = DemoModels(models)  # converts only what no earlier call recorded there
        for target in model_targets(parse_profile_mix(DEFAULT_PROFILE_MIX)):
            made.convert(target, MODEL_VERSION)
        shutil.copytree(models, tmp_path / "simulate" / "models")
    return str(tmp_path / "simulate")


def test_light_fleet_through_network_loss_and_a_broker_restart_loses_nothing(tmp_path: Path) -> None:
    done = edgefleet("simulate", "--data-dir", data_dir(tmp_path), "--devices", "30", "--network-loss", "20%:2s", "--broker-restart", "1s",
                     "--slow-link", "0.05", "--clock-skew", "10%:120s", "--duration", "90s", "--json", timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = last_json_line(done.stdout)
    assert report["mode"] == "light" and report["devices"] == 30
    assert [f["fault"] for f in report["faults"]] == ["network_down", "broker_restart", "network_up"]
    assert not any("error" in f for f in report["faults"])
    assert report["statuses"]["committed"] == 30 and report["failures_by_reason"] == {}
    assert {r["state"] for r in report["rollouts"]} == {"completed"}
    assert report["messages"] == {"lost": 0, "lost_devices": [], "duplicated": 0}
    latency = report["update_latency"]
    assert latency["count"] == 30 and latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]
    # The devices that lost the network finished last, after it came back (2 s + 5 steps of 0.05 s).
    assert latency["max_s"] >= 1.5


def test_agents_refuse_a_corrupted_download_and_the_rollout_halts(tmp_path: Path) -> None:
    done = edgefleet("simulate", "--data-dir", data_dir(tmp_path), "--devices", "2", "--processes", "--corrupt-download", "--duration", "60s", "--json",
                     timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = last_json_line(done.stdout)
    assert report["mode"] == "processes"
    assert report["failures_by_reason"] == {"hash_mismatch": 2}  # TUF refused the altered bytes on each agent
    assert {r["state"] for r in report["rollouts"]} == {"halted"}
    assert report["messages"]["lost"] == 0


def test_sigkilled_agent_restarts_and_the_rollout_completes(tmp_path: Path) -> None:
    done = edgefleet("simulate", "--data-dir", data_dir(tmp_path), "--devices", "3", "--processes", "--sigkill", "1", "--duration", "90s", "--json",
                     timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = last_json_line(done.stdout)
    assert [f["fault"] for f in report["faults"]] == ["sigkill"] and report["faults"][0]["devices"] == 1
    assert {r["state"] for r in report["rollouts"]} == {"completed"}
    assert report["statuses"]["committed"] == 3 and report["messages"]["lost"] == 0


def test_a_fault_the_mode_cannot_do_is_refused_with_the_fix() -> None:
    done = edgefleet("simulate", "--devices", "3", "--sigkill", "1", timeout=60)
    assert done.returncode == 1
    assert "--sigkill kills agent processes" in done.stderr and "add --processes" in done.stderr
