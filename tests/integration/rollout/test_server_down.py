"""Issue 19, hole 2, in real processes: an outcome reached while the server is down is learned.

A device commits while `edgefleet server` is down and restarts before the server returns.
Before issue 19 the server's clean MQTT session under a random id dropped the `committed`
event, the restarted agent reported `idle`, and the engine ignored the version it served:
the rollout stayed `running`, timed the device out, halted and sent every device (all on
the good version) back to the old one. Mosquitto, the server and the agent are real
processes (tests/support/fleet.py); the server is SIGKILLed, as a crash would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.bundle import read_bundle
from simulation.fleet import mosquitto_binary
from tests.support.bundles import make_onnx_bundle
from tests.support.fleet import Fleet, Load, fleet, wait_for

MODEL = "digits"
# Waves of one device, no bake: the outcome alone decides. The device timeout is short so
# that the old server's failure (a timeout, then a rollback) shows within the test.
ROLLOUT = ("--selector", "site=lab", "--waves", "100", "--bake", "0", "--device-timeout", "25",
           "--max-failure-rate", "0", "--min-success-rate", "1", "--auto-rollback")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("server-down-bundles")
    return {v: make_onnx_bundle(directory, name=MODEL, version=v) for v in ("1.0.0", "2.0.0")}


@pytest.fixture
def running_fleet(tmp_path: Path) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    yield from fleet(tmp_path)


def test_a_device_that_commits_and_restarts_while_the_server_is_down_completes_the_rollout(
        running_fleet: Fleet, versions: dict[str, Path]) -> None:
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=versions["1.0.0"]).start()
    fleet.wait_online([agent])
    fleet.server.push(versions["1.0.0"])
    fleet.server.push(versions["2.0.0"])
    rows = [[float(v) for v in row] for row in read_bundle(versions["1.0.0"]).golden()["inputs"][:2]]
    with Load([agent], MODEL, rows):  # probation needs traffic to commit (the kill fails some requests)
        created = fleet.server.create_rollout(f"{MODEL}@2.0.0", *ROLLOUT)
        agent.wait_update("activated", 30, version="2.0.0")
        fleet.server.kill()  # the server dies while the device is in probation
        committed = agent.wait_update("committed", 30, version="2.0.0")  # the device commits meanwhile
        agent.kill()
        agent.start()  # and restarts before the server is back
        wait_for(lambda: agent.log().count("resuming after a restart") == 2, 20, "the restarted agent to resume",
                 explain=agent.log)
        fleet.server.start()
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 60)
        assert done["state"] == "completed", done["log"]
    record = next(r for r in done["device_records"] if r["device_id"] == agent.device_id)
    assert record["status"] == "committed" and record["serves"] == "2.0.0", record
    # What the server keeps for the device is what the device serves.
    active = agent.active_version(MODEL)
    assert active == "2.0.0"
    reported = fleet.server.device(agent.device_id)["reported"]
    assert reported["models"][MODEL]["version"] == active
    bundle = read_bundle(versions["2.0.0"])
    assert reported["models"][MODEL]["sha256"] == bundle.sha256
    assert agent.predict(MODEL, rows).json()["version"] == "2.0.0"
    # Nobody was rolled back: the device's last accepted assignment is the rollout's own.
    accepted = agent.accepted_assignment() or {}
    assert accepted.get("counter") == committed["counter"], accepted
    assert fleet.server.device(agent.device_id)["assignment_counter"] == committed["counter"]
    # The served slot's model file is the pushed bundle's model member, byte for byte.
    model_file = agent.state_dir / "models" / MODEL / "slots" / bundle.sha256 / bundle.manifest.model_file
    assert hashlib.sha256(model_file.read_bytes()).digest() == hashlib.sha256(bundle.model_bytes).digest()
