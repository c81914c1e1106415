"""SIGKILL in the middle of an update, on the device and on the server, across real processes.

The agent is stopped at an exact point by the update service's fault hook
(EDGEFLEET_FAULT_PAUSE_AT / EDGEFLEET_FAULT_PAUSE_AT_BYTE, agent/update_service.py: it pauses
right after persisting that state, or once that many bytes of the download are on disk) and
then killed with SIGKILL from here.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import topics
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
        agent.wait_update("committed", 30, version="2.0.0")
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 20)
    assert done["state"] == "completed", done["log"]
    assert agent.active_version(MODEL) == "2.0.0"
    assert load.failed == {}, load.failed
    if kill_at == "activated":
        # The crash counted toward probation's crash-loop limit (the commit reports probation's figures).
        committed = wait_for(lambda: fleet.events.of(agent.device_id, "committed"), 10, "the committed event")
        assert committed[-1]["details"]["probation"]["restarts"] == 1
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


def _pauses(agent: FleetAgent) -> int:
    return agent.log().count("fault injection: pausing")


def test_two_kills_inside_one_probation_roll_back_even_right_after_the_restart_is_written(
        running_fleet: Fleet, bundles: Bundles) -> None:
    """Issue 19, hole 1, with real processes: probation_max_restarts=2, two SIGKILLs in one probation.

    The second kill lands in the restarted agent right after its first write, the one that
    counts the restart (fault hook: paused after persisting `activated`). The old updater had
    written only the machine's restart count there, not probation's, so the next start
    counted one restart instead of two and committed the version.
    """
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1)
    fleet.server.push(bundles.v2)
    # A long probation: nothing but the crash loop can end it within this test.
    settings = {"EDGEFLEET_PROBATION_MAX_RESTARTS": "2", "EDGEFLEET_PROBATION_S": "600"}
    paused = {**settings, "EDGEFLEET_FAULT_PAUSE_AT": "activated"}
    agent.start(paused)
    fleet.wait_online([agent])
    fleet.server.create_rollout(f"{MODEL}@2.0.0", *ROLLOUT)
    agent.wait_update("activated", 20, version="2.0.0")
    wait_for(lambda: _pauses(agent) == 1, 20, "the pause after activation", explain=agent.log)
    agent.kill()  # kill 1: in probation
    agent.start(paused)
    wait_for(lambda: _pauses(agent) == 2, 20, "the pause after the restart was written", explain=agent.log)
    agent.kill()  # kill 2: right after the restarted agent wrote its restart
    agent.start(settings)
    update = agent.wait_update("rolled_back", 20, version="2.0.0")
    assert update["reason"] == "probation_failed"
    wait_for(lambda: fleet.events.of(agent.device_id, "rolled_back"), 10, "the rolled_back event")
    rolled = fleet.events.of(agent.device_id, "rolled_back")
    assert rolled[-1]["details"]["cause"] == "crash_loop", rolled
    assert agent.active_version(MODEL) == "1.0.0"
    assert agent.predict(MODEL, bundles.rows).json()["version"] == "1.0.0"


class Reported:
    """The device's retained `reported` documents, read as the server's MQTT user."""

    def __init__(self, fleet: Fleet, device_id: str) -> None:
        self.documents: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reported-{time.monotonic_ns()}")
        self.client.username_pw_set(*fleet.server.mqtt_credentials())
        self.client.on_connect = lambda c, *_: c.subscribe(topics.reported(device_id), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", fleet.broker.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.documents.append(json.loads(message.payload))

    def since(self, ts: float) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self.documents if d.get("online") and float(d.get("ts", 0)) > ts]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_restarted_agent_still_reports_the_outcome_it_reached_and_the_version_it_serves(
        running_fleet: Fleet, bundles: Bundles) -> None:
    """Issue 19, hole 2, the agent's side: a restart must not erase the outcome from `reported`.

    A server that missed the `committed` event (down, or its session dropped) learns the outcome
    from the retained report; the old agent reset it to idle on every restart.
    """
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1).start()
    fleet.wait_online([agent])
    fleet.server.push(bundles.v2)
    fleet.server.create_rollout(f"{MODEL}@2.0.0", *ROLLOUT)
    with Load([agent], MODEL, bundles.rows):  # probation needs traffic to commit
        committed = agent.wait_update("committed", 30, version="2.0.0")
    agent.kill()
    agent.start()
    wait_for(lambda: agent.log().count("resuming after a restart") == 2, 20, "the restarted agent to resume",
             explain=agent.log)
    reported = Reported(fleet, agent.device_id)
    try:
        asked = time.time()
        # The server's `report` command: the agent publishes what it reports now, after its resume.
        fleet.events.publish(topics.commands(agent.device_id), json.dumps({"command": "report"}).encode())
        fresh = wait_for(lambda: reported.since(asked), 20, "a reported document after the report command")
    finally:
        reported.close()
    document = fresh[-1]
    assert document["update"] == {"state": "committed", "model": MODEL, "version": "2.0.0",
                                  "counter": committed["counter"], "rollout_id": committed["rollout_id"],
                                  "reason": None}
    assert document["models"][MODEL]["version"] == "2.0.0"  # the version that actually serves
