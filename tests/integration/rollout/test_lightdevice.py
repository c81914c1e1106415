"""Light simulated devices against a real Mosquitto: real signatures, real events, real wills."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet import topics
from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget
from simulation.fleet import MosquittoProcess
from simulation.lightdevice import Behaviour, DeviceIdentity, LightFleet, Outcome, Step, plan_update
from tests.integration.rollout.mqtt_tools import Recorder

HAPPY = ["assigned", "downloaded", "verified", "staged", "health_passed", "activated", "committed"]


def _envelope(signer: DirectorSigner, device_id: str, counter: int, version: str, *,
              expires_in: timedelta = timedelta(days=1)) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    target = ModelTarget(version, f"digits/digits-{version}.tar.gz", "ab" * 32, 1234)
    return signer.sign(Assignment(device_id, counter, now - timedelta(seconds=5), now + expires_in, "ro-1",
                                  {"digits": target}))


def test_plan_update_scripts_each_outcome() -> None:
    assert [s.event for s in plan_update("m", "1.0.0", "2.0.0", Outcome.SUCCEED)] == HAPPY
    health = plan_update("m", "1.0.0", "2.0.0", Outcome.FAIL_HEALTH)
    assert [s.event for s in health][-1] == "failed" and all(s.serving == "1.0.0" for s in health)
    probation = plan_update("m", "1.0.0", "2.0.0", Outcome.FAIL_PROBATION)
    assert [s.event for s in probation][-2:] == ["activated", "rolled_back"]
    assert probation[-2].serving == "2.0.0" and probation[-1].serving == "1.0.0"
    assert plan_update("m", None, "2.0.0", Outcome.OFFLINE) == [Step("assigned", "m", "2.0.0", None, goes_offline=True)]
    refused = plan_update("m", "1.0.0", "2.0.0", Outcome.SUCCEED, refusal="tuf_hash_mismatch")
    assert [(s.event, s.reason) for s in refused] == [("assigned", None), ("failed", "tuf_hash_mismatch")]


def test_device_verifies_assignment_and_reports_every_step(mosquitto: MosquittoProcess) -> None:
    signer = DirectorSigner.generate()
    ident = DeviceIdentity("dev-a", "rpi4-64", signer.public_b64)
    with Recorder(mosquitto.url, "edgefleet/v1/devices/+/events", "edgefleet/v1/devices/+/reported") as rec, \
            LightFleet(mosquitto.url) as fleet:
        fleet.add(ident)
        fleet.wait_connected()
        rec.publish(topics.desired("dev-a"), _envelope(signer, "dev-a", 3, "1.0.0"), retain=True)
        rec.wait_for(lambda: [e["event"] for e in rec.json_on(topics.events("dev-a"))] == HAPPY)
        events = rec.json_on(topics.events("dev-a"))
        assert {(e["counter"], e["rollout_id"], e["version"]) for e in events} == {(3, "ro-1", "1.0.0")}
        rec.wait_for(lambda: rec.json_on(topics.reported("dev-a"))[-1]["models"].get("digits", {}).get("version") == "1.0.0")

        # a forged signature and a replayed counter are refused with the reason the agent would give
        forged = DirectorSigner.generate()
        rec.publish(topics.desired("dev-a"), _envelope(forged, "dev-a", 4, "2.0.0"), retain=True)
        rec.publish(topics.desired("dev-a"), _envelope(signer, "dev-a", 2, "3.0.0"), retain=True)
        rec.publish(topics.desired("dev-a"), _envelope(signer, "dev-b", 5, "3.0.0"), retain=True)
        rec.wait_for(lambda: len(fleet.devices["dev-a"].refusals) == 3)
        assert fleet.devices["dev-a"].refusals == ["bad_signature", "replayed_counter", "wrong_device"]
        assert fleet.devices["dev-a"].models["digits"][0] == "1.0.0"


@pytest.mark.parametrize(("outcome", "last", "serving"), [
    (Outcome.FAIL_HEALTH, "failed", "1.0.0"),
    (Outcome.FAIL_PROBATION, "rolled_back", "1.0.0"),
])
def test_scripted_failures_keep_the_old_version(mosquitto: MosquittoProcess, outcome: Outcome, last: str,
                                                serving: str) -> None:
    signer = DirectorSigner.generate()
    behaviour = Behaviour(per_version={"digits@2.0.0": outcome})
    with Recorder(mosquitto.url, "edgefleet/v1/devices/+/events") as rec, LightFleet(mosquitto.url) as fleet:
        dev = fleet.add(DeviceIdentity("dev-f", "rpi4-64", signer.public_b64), behaviour,
                        models={"digits": ("1.0.0", "cd" * 32)})
        fleet.wait_connected()
        rec.publish(topics.desired("dev-f"), _envelope(signer, "dev-f", 4, "2.0.0"), retain=True)
        rec.wait_for(lambda: any(e["event"] == last for e in rec.json_on(topics.events("dev-f"))))
        assert dev.models["digits"][0] == serving
        assert "committed" not in dev.event_names()


def test_offline_device_leaves_its_will_retained(mosquitto: MosquittoProcess) -> None:
    signer = DirectorSigner.generate()
    with LightFleet(mosquitto.url) as fleet:
        fleet.add(DeviceIdentity("dev-o", "rpi4-64", signer.public_b64), Behaviour(default=Outcome.OFFLINE))
        fleet.wait_connected()
        with Recorder(mosquitto.url, topics.desired("dev-o")) as pub:
            pub.publish(topics.desired("dev-o"), _envelope(signer, "dev-o", 1, "1.0.0"), retain=True)
        fleet.wait_for(lambda: not fleet.devices["dev-o"].connected.is_set(), 10, "the device to drop")
        with Recorder(mosquitto.url, topics.reported("dev-o")) as rec:
            rec.wait_for(lambda: bool(rec.json_on(topics.reported("dev-o"))))
            assert rec.json_on(topics.reported("dev-o"))[-1] == {"device_id": "dev-o", "online": False}
            assert rec.messages[-1][2] is True  # retained
        # back online, it takes the interrupted update up again and finishes it
        fleet.reconnect("dev-o")
        fleet.wait_for(lambda: fleet.devices["dev-o"].event_names()[-1:] == ["committed"], 10, "the resumed update")
        assert fleet.devices["dev-o"].models["digits"][0] == "1.0.0"


@pytest.mark.parametrize(("outcome", "last", "serving"), [
    (Outcome.SUCCEED, "committed", "2.0.0"),
    (Outcome.FAIL_PROBATION, "rolled_back", "1.0.0"),
])
def test_device_dropped_after_activation_finishes_its_update_when_back(mosquitto: MosquittoProcess, outcome: Outcome,
                                                                       last: str, serving: str) -> None:
    # The new version already serves (activated), its outcome is not sent yet: a device back online
    # must still send it. It used to resume nothing (nothing left to install), leaving the server
    # waiting for an outcome that never came (test_simulate's network loss, one run in many).
    signer = DirectorSigner.generate()
    # A step takes 0.5 s, so the drop lands between "activated" and the outcome.
    behaviour = Behaviour(per_version={"digits@2.0.0": outcome}, step_delay=0.5)
    with LightFleet(mosquitto.url) as fleet:
        dev = fleet.add(DeviceIdentity("dev-p", "rpi4-64", signer.public_b64), behaviour,
                        models={"digits": ("1.0.0", "cd" * 32)})
        fleet.wait_connected()
        with Recorder(mosquitto.url, topics.desired("dev-p")) as pub:
            pub.publish(topics.desired("dev-p"), _envelope(signer, "dev-p", 7, "2.0.0"), retain=True)
        fleet.wait_for(lambda: "activated" in dev.event_names(), 10, "the activation")
        fleet.drop("dev-p")
        assert dev.event_names()[-1] == "activated", "the drop came too late to interrupt the update"
        fleet.wait_for(lambda: not dev.connected.is_set(), 10, "the device to drop")
        fleet.reconnect("dev-p")
        fleet.wait_for(lambda: last in dev.event_names(), 10, f"the interrupted update's {last}")
        assert dev.event_names().count(last) == 1 and dev.models["digits"][0] == serving


def test_two_hundred_devices_share_one_thread(mosquitto: MosquittoProcess) -> None:
    import threading

    signer = DirectorSigner.generate()
    with LightFleet(mosquitto.url) as fleet:
        t0 = time.monotonic()
        for i in range(200):
            fleet.add(DeviceIdentity(f"dev-{i:03d}", "rpi4-64", signer.public_b64))
        fleet.wait_connected(30)
        connected_s = time.monotonic() - t0
        names = [t.name for t in threading.enumerate()]
        # one network thread for the fleet, and no paho thread per device (paho names its thread after
        # the client id; threads of other tests in this worker have other ids)
        ours = {f"paho-mqtt-client-dev-{i:03d}" for i in range(200)}
        assert names.count("lightfleet-loop") == 1 and not ours & set(names)
        with Recorder(mosquitto.url, "edgefleet/v1/devices/+/events") as rec:
            t1 = time.monotonic()
            for i in range(200):
                rec.publish(topics.desired(f"dev-{i:03d}"), _envelope(signer, f"dev-{i:03d}", 1, "1.0.0"), retain=True)
            rec.wait_for(lambda: sum(1 for _, p, _ in rec.messages if b'"committed"' in p) == 200, 30)
            updated_s = time.monotonic() - t1
    print(f"200 light devices: connected in {connected_s:.2f} s, 200 updates (1,400 events) in {updated_s:.2f} s")


def test_devices_reconnect_after_a_broker_restart(mosquitto: MosquittoProcess) -> None:
    signer = DirectorSigner.generate()
    with LightFleet(mosquitto.url) as fleet:
        for i in range(5):
            fleet.add(DeviceIdentity(f"dev-r{i}", "rpi4-64", signer.public_b64))
        fleet.wait_connected()
        mosquitto.restart()
        fleet.wait_for(lambda: not all(d.connected.is_set() for d in fleet.devices.values()), 5, "the drop")
        fleet.wait_connected(15)
        with Recorder(mosquitto.url, "edgefleet/v1/devices/+/events") as rec:
            for i in range(5):
                rec.publish(topics.desired(f"dev-r{i}"), _envelope(signer, f"dev-r{i}", 1, "1.0.0"), retain=True)
            rec.wait_for(lambda: sum(1 for _, p, _ in rec.messages if b'"committed"' in p) == 5)
