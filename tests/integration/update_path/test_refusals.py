"""Refusals across real processes, each a `failed` event with its reason while the old model serves.

A tampered target goes through the whole chain (push, rollout, TUF download). The forged
assignments are published retained on the device's `desired` topic as the server's own MQTT
user, the one account the broker lets write there: what an attacker holding the server's broker
password could do. The bad signature comes from a key of our own; the profile mismatch, replay
and expiry are signed with the server's real director key (read from its data directory), so
each is refused by exactly the check it targets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet import topics
from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget
from tests.integration.update_path.conftest import MODEL, Bundles
from tests.support.fleet import Fleet, FleetAgent, Load, wait_for


def _failed_reasons(fleet: Fleet, agent: FleetAgent) -> list[str]:
    return [str(e["reason"]) for e in fleet.events.of(agent.device_id, "failed")]


def test_a_tampered_target_is_refused_by_tuf_and_the_old_model_keeps_serving(
        running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1).start()
    fleet.wait_online([agent])
    v2 = fleet.server.push(bundles.v2)
    target = fleet.server.target_file(v2)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte off: only the hash can tell
    target.write_bytes(bytes(data))
    with Load([agent], MODEL, bundles.rows) as load:
        created = fleet.server.create_rollout(f"{MODEL}@2.0.0", "--selector", "site=lab", "--waves", "100",
                                              "--bake", "0", "--max-failure-rate", "0")
        done = fleet.server.wait_rollout(created["id"], {"completed", "halted", "rolled_back"}, 30)
        failed = wait_for(lambda: fleet.events.of(agent.device_id, "failed"), 10, "the failed event")
    assert done["state"] == "halted", done["log"]
    assert failed[0]["reason"] == "hash_mismatch" and failed[0]["version"] == "2.0.0", failed
    assert agent.update()["state"] == "failed" and agent.update()["reason"] == "hash_mismatch"
    assert agent.active_version(MODEL) == "1.0.0"
    assert list((agent.state_dir / "downloads").rglob("*.tar.gz")) == []  # the bad bytes were not kept
    assert load.tally[agent.name].versions == {"1.0.0"}
    assert load.failed == {}, load.failed


def test_forged_assignments_published_on_the_broker_are_refused(running_fleet: Fleet, bundles: Bundles) -> None:
    fleet = running_fleet
    agent = fleet.enroll("pi-0", labels={"site": "lab"}, install=bundles.v1).start()
    fleet.wait_online([agent])
    other = fleet.server.push(bundles.other_profile)  # validated for rpi4-64 only; this device is generic-x86_64
    director = DirectorSigner.from_pem((fleet.server.data_dir / "keys" / "director.pem").read_bytes())
    models = {MODEL: ModelTarget(str(other["version"]), str(other["target_path"]), str(other["sha256"]),
                                 int(other["length"]))}
    now = datetime.now(UTC).replace(microsecond=0)

    def assignment(counter: int, *, issued: datetime = now, lifetime: timedelta = timedelta(hours=1)) -> Assignment:
        return Assignment(agent.device_id, counter, issued, issued + lifetime, "forged", models)

    def publish_and_wait(envelope: bytes, reason: str) -> dict[str, Any]:
        seen = len(fleet.events.of(agent.device_id, "failed"))
        fleet.events.publish(topics.desired(agent.device_id), envelope, retain=True)
        events = wait_for(lambda: fleet.events.of(agent.device_id, "failed")[seen:], 15, f"a {reason} refusal",
                          explain=agent.log)
        assert events[0]["reason"] == reason, events
        return dict(events[0])

    with Load([agent], MODEL, bundles.rows) as load:
        # Signed by the real director, right device, fresh counter: accepted, then the bundle is refused.
        mismatch = publish_and_wait(director.sign(assignment(100)), "profile_mismatch")
        assert mismatch["details"]["device_profile"] == "generic-x86_64"
        assert mismatch["details"]["profiles"] == ["rpi4-64"]
        assert agent.accepted_assignment()["counter"] == 100  # type: ignore[index]
        publish_and_wait(DirectorSigner.generate().sign(assignment(101)), "bad_signature")
        publish_and_wait(director.sign(assignment(99)), "replayed_counter")
        publish_and_wait(director.sign(assignment(102, issued=now - timedelta(hours=2))), "expired")
        served = load.served(agent.name)
        wait_for(lambda: load.served(agent.name) > served + 20, 10, "predictions after the refusals")
    # A refused document never moves the counter, and nothing of 2.3.0 was kept or served.
    assert agent.accepted_assignment()["counter"] == 100  # type: ignore[index]
    assert _failed_reasons(fleet, agent) == ["profile_mismatch", "bad_signature", "replayed_counter", "expired"]
    assert agent.active_version(MODEL) == "1.0.0"
    assert not (agent.state_dir / "models" / MODEL / "slots" / str(other["sha256"])).exists()
    assert load.tally[agent.name].versions == {"1.0.0"}
    assert load.failed == {}, load.failed
