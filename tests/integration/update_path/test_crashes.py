"""SIGKILL in the middle of an update, on the device and on the server, across real processes.

The agent is stopped at an exact point by the updater's fault hook (EDGEFLEET_FAULT_PAUSE_AT /
EDGEFLEET_FAULT_PAUSE_AT_BYTE: it pauses right after persisting that state, or once that many
bytes of the download are on disk) and then killed with SIGKILL from here.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.integration.update_path.conftest import MODEL, Bundles
from tests.support.fleet import Fleet, FleetAgent, Load, wait_for

ROLLOUT = ("--selector", "site=lab", "--waves", "100", "--bake", "0", "--device-timeout", "60",
           "--max-failure-rate", "0", "--min-success-rate", "1")
STATES = ("downloading", "verified", "staged", "health_check", "activated")


def _partial_bytes(agent: FleetAgent) -> int:
    partial = agent.state_dir / "downloads" / ".partial"
    return sum(p.stat().st_size for p in partial.glob("*")) if partial.is_dir() else 0


def _slots(agent: FleetAgent) -> set[str]:
    return {p.name for p in (agent.state_dir / "models" / MODEL / "slots").iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("kill_at", [*STATES, "byte"])
def test_sigkill_at_every_state_then_restart_serves_a_verified_model_and_finishes(
        running_fleet: Fleet, bundles: Bundles, kill_at: str) -> None:
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1)
    v2 = fleet.server.push(bundles.v2)
    if kill_at == "byte":
        at_byte = random.Random(kill_at).randrange(1, int(v2["length"]))
        fault = {"EDGEFLEET_FAULT_PAUSE_AT_BYTE": str(at_byte)}
    else:
        fault = {"EDGEFLEET_FAULT_PAUSE_AT": kill_at}
    agent.start(fault)
    fleet.wait_online([agent])
    created = fleet.server.create_rollout(f"{MODEL}@2.0.0", *ROLLOUT)
    if kill_at == "byte":
        wait_for(lambda: _partial_bytes(agent) >= at_byte, 20, f"{at_byte} bytes of the download on disk",
                 explain=agent.log)
        assert agent.update()["state"] == "downloading"
        kept = _partial_bytes(agent)
        assert kept < int(v2["length"])
    else:
        agent.wait_update(kill_at, 20, version="2.0.0")
    agent.kill()

    expected = "2.0.0" if kill_at == "activated" else "1.0.0"
    assert agent.active_version(MODEL) == expected  # the pointer only ever names a whole, verified slot
    agent.start()  # no fault hook this time
    answer = agent.predict(MODEL, bundles.rows)  # serving at once, before the update resumes
    assert answer.status_code == 200 and answer.json()["version"] in {"1.0.0", "2.0.0"}, answer.text
    with Load([agent], MODEL, bundles.rows) as load:
        update = agent.wait_update("committed", 30, version="2.0.0")
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 20)
    assert done["state"] == "completed", done["log"]
    assert agent.active_version(MODEL) == "2.0.0"
    assert load.failed == {}, load.failed
    if kill_at == "activated":
        assert update["machine"]["restarts"] == 1  # the crash counted toward probation's crash-loop limit
    if kill_at == "byte":
        assert fleet.events.of(agent.device_id, "downloaded"), "no downloaded event after the resume"
        # The kept bytes were resumed with a Range request, not fetched again from byte 0.
        assert "ignored Range" not in agent.log() and "again from byte 0" not in agent.log()
    # Clean: no partial or finished download left, only the active and previous slots.
    assert list((agent.state_dir / "downloads").rglob("*.tar.gz")) == []
    assert _partial_bytes(agent) == 0
    assert _slots(agent) == {json.loads((agent.state_dir / "models" / MODEL / p).read_text())["sha256"]
                             for p in ("active.json", "previous.json")}


def test_the_server_killed_mid_rollout_carries_on_after_restart(running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agents = [fleet.enroll(f"pi-{i}", labels={"site": "lab"}, install=bundles.v1).start() for i in range(2)]
    fleet.wait_online(agents)
    fleet.server.push(bundles.v1)
    fleet.server.push(bundles.v2)
    with Load(agents, MODEL, bundles.rows) as load:
        created = fleet.server.create_rollout(f"{MODEL}@2.0.0", "--selector", "site=lab", "--waves", "50,100",
                                              "--bake", "4", "--device-timeout", "60", "--auto-rollback")

        def first_wave_committed() -> bool:
            records = fleet.server.rollout(created["id"])["device_records"]
            return sorted(r["status"] for r in records) == ["committed", "pending"]

        wait_for(first_wave_committed, 20, "the first wave to commit")
        fleet.server.kill()  # inside the bake: the next wave is due while the server is dead
        fleet.server.start()
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 30)
    assert done["state"] == "completed", done["log"]
    assert {r["status"] for r in done["device_records"]} == {"committed"}
    assert [w["committed"] for w in done["waves"]] == [1, 1]
    for agent in agents:
        assert agent.active_version(MODEL) == "2.0.0"
        assert len(fleet.events.of(agent.device_id, "committed")) == 1  # each device updated exactly once
    assert load.failed == {}, load.failed
