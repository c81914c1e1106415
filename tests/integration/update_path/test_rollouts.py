"""Rollouts across real processes: `edgefleet server`, a Mosquitto with per-device ACLs, and
`edgefleet agent run` daemons, each with its own state directory, serving predictions throughout."""

from __future__ import annotations

from tests.integration.update_path.conftest import MODEL, Bundles
from tests.support.fleet import Fleet, Load, wait_for

FAST_ROLLOUT = ("--bake", "1", "--device-timeout", "60", "--max-failure-rate", "0", "--min-success-rate", "1")


def test_good_versions_roll_out_in_waves_with_no_failed_request(running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agents = [fleet.enroll(f"pi-{i}", labels={"site": "lab"}).start() for i in range(3)]
    fleet.wait_online(agents)
    fleet.server.push(bundles.v1)
    fleet.server.push(bundles.v2)
    with Load(agents, MODEL, bundles.rows) as load:
        first = fleet.server.create_rollout(f"{MODEL}@1.0.0", "--selector", "site=lab", "--waves", "33,100",
                                            *FAST_ROLLOUT)
        done = fleet.server.wait_rollout(first["id"], {"completed", "halted", "rolled_back"}, 40)
        assert done["state"] == "completed", done["log"]
        assert [w["size"] for w in done["waves"]] == [1, 2]
        assert all(a.active_version(MODEL) == "1.0.0" for a in agents)
        second = fleet.server.create_rollout(f"{MODEL}@2.0.0", "--selector", "site=lab", "--waves", "33,100",
                                             *FAST_ROLLOUT)
        done = fleet.server.wait_rollout(second["id"], {"completed", "halted", "rolled_back"}, 40)
    assert done["state"] == "completed", done["log"]
    assert {r["status"] for r in done["device_records"]} == {"committed"}
    for agent in agents:
        assert agent.active_version(MODEL) == "2.0.0"
        assert agent.update()["state"] == "committed" and agent.update()["version"] == "2.0.0"
        assert load.tally[agent.name].versions == {"1.0.0", "2.0.0"}, "predictions did not flow across the switch"
        reported = fleet.server.device(agent.device_id)["reported"]
        assert reported["models"][MODEL]["version"] == "2.0.0" and reported["update"]["state"] == "committed"
    assert load.failed == {}, load.failed


def test_a_version_failing_its_golden_samples_halts_at_the_first_wave_and_rolls_back(
        running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agents = [fleet.enroll(f"pi-{i}", labels={"site": "lab"}, install=bundles.v1).start() for i in range(3)]
    fleet.wait_online(agents)
    fleet.server.push(bundles.v1)
    fleet.server.push(bundles.broken)
    with Load(agents, MODEL, bundles.rows) as load:
        created = fleet.server.create_rollout(f"{MODEL}@2.1.0", "--selector", "site=lab", "--waves", "33,100",
                                              "--auto-rollback", *FAST_ROLLOUT)
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 30)
        assert done["state"] == "rolled_back", done["log"]
        assert done["current_wave"] == 0 and "wave 1" in str(done["halt_reason"])
        records = {r["device_id"]: r for r in done["device_records"]}
        touched = [a for a in agents if records[a.device_id]["status"] != "pending"]
        untouched = [a for a in agents if records[a.device_id]["status"] == "pending"]
        assert len(touched) == 1 and len(untouched) == 2, records
        canary = touched[0]
        failed = wait_for(lambda: fleet.events.of(canary.device_id, "failed"), 10, "the canary's failed event")
        # The rollback is a new, higher-counter assignment naming the version the canary ran before.
        back = wait_for(lambda: (canary.accepted_assignment() or {}).get("envelope", {}).get("signed", {})
                        .get("models", {}).get(MODEL, {}).get("version") == "1.0.0", 10, "the rollback assignment")
        assert back
        served_after = load.served(canary.name)
        wait_for(lambda: load.served(canary.name) > served_after + 20, 10, "predictions after the rollback")
    assert failed[0]["reason"] == "health_failed" and failed[0]["details"]["cause"] == "golden_mismatch", failed
    assert canary.update()["state"] == "failed" and canary.update()["reason"] == "health_failed"
    assert canary.active_version(MODEL) == "1.0.0"
    reported = fleet.server.device(canary.device_id)["reported"]
    assert reported["update"]["state"] == "failed" and reported["update"]["reason"] == "health_failed"
    for agent in untouched:
        # Never assigned, never downloaded: the rest of the fleet did not see 2.1.0 at all.
        assert agent.accepted_assignment() is None
        assert agent.update().get("version") != "2.1.0"
        assert fleet.events.of(agent.device_id) == []
        assert fleet.server.device(agent.device_id)["assignment_counter"] == 0
        assert agent.active_version(MODEL) == "1.0.0"
    for agent in agents:
        assert load.tally[agent.name].versions == {"1.0.0"}
    assert load.failed == {}, load.failed


def test_a_version_failing_in_probation_rolls_back_on_the_device(running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1).start()
    fleet.wait_online([agent])
    fleet.server.push(bundles.nan)
    # A pixel of -2: the old model answers it, the new one answers NaN.
    rows = [[-2.0, *bundles.rows[0][1:]]]
    with Load([agent], MODEL, rows) as load:
        created = fleet.server.create_rollout(f"{MODEL}@2.2.0", "--selector", "site=lab", "--waves", "100",
                                              *FAST_ROLLOUT)
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 30)
        rolled = wait_for(lambda: fleet.events.of(agent.device_id, "rolled_back"), 10, "the rolled_back event")
    assert done["state"] == "halted", done["log"]
    assert [e["event"] for e in fleet.events.of(agent.device_id)][-2:] == ["activated", "rolled_back"]
    assert rolled[0]["reason"] == "probation_failed" and rolled[0]["details"]["cause"] == "bad_outputs", rolled
    assert {r["status"] for r in done["device_records"]} == {"failed"}
    update = agent.update()
    assert update["state"] == "rolled_back" and update["reason"] == "probation_failed"
    assert fleet.server.device(agent.device_id)["reported"]["update"]["state"] == "rolled_back"
    assert agent.active_version(MODEL) == "1.0.0"
    answer = agent.predict(MODEL, rows)
    assert answer.status_code == 200 and answer.json()["version"] == "1.0.0"
    # While on probation the new version's NaN answers reached no client as numbers: the API
    # refused them, and probation counted them and rolled back.
    failures = load.tally[agent.name].failures
    assert failures and all("NaN" in f for f in failures), failures
