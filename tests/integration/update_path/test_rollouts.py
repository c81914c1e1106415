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
        reported = wait_for(lambda a=agent: fleet.server.device(a.device_id)["reported"]["models"].get(MODEL),
                            10, "the server to store the reported model")
        assert reported["version"] == "2.0.0"
    assert load.failed == {}, load.failed
